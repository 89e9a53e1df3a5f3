"""The verbalizer's label words as tokens, and how a causal LM scores words of several tokens.

The score of class ``c`` for a text is the LM's log-probability of its label word after the
prompt: the sum over the word's tokens ``t_1..t_n`` of ``log p(t_k | prompt, t_1..t_{k-1})``.
When every label word is one token the class scores are the raw label-word logits at the last
position instead (:attr:`LabelWords.single`, one head row per class): they differ from the
log-probabilities by the same log-normaliser for every class, so their softmax over the classes,
which training, confidence thresholds and calibration use, is the same.

When any word is several tokens every class is scored by its summed log-probability (one
consistent score), in fixed shapes so an exported graph computes it too
(:meth:`LabelWords.log_probs`): each prompt is repeated once per class (``batch * classes``
rows), followed by that class's word without its last token in ``L - 1`` extra columns (``L``:
the longest word), right-aligned; the columns a shorter word leaves free are masked padding
between the prompt and the word, and the word's positions continue the prompt's. The LM head runs
at the last ``L`` positions only. Window position 0 (the prompt's last token) predicts every
word's first token and position ``L - n + k`` predicts token ``k + 1`` of a word of ``n``
tokens; constant ``[classes, L]`` tables of target tokens and a mask pick the log-probabilities
to sum. The cost is one forward row per class instead of one per text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from lpfl.errors import ModelError

LogitsAt = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]
"""``(input_ids, attention_mask, position_ids, keep)`` -> the LM's vocabulary logits at the last
``keep`` positions, ``[rows, keep, vocab]``."""


def label_tokens(tokenizer: PreTrainedTokenizerBase, words: Sequence[str],
                 causal: bool) -> tuple[tuple[int, ...], ...]:
    """Each label word's token ids; several tokens only for a causal LM, else a ModelError."""
    table = []
    for word in words:
        pieces = tuple(int(i) for i in tokenizer.encode(word, add_special_tokens=False))
        if not pieces or tokenizer.unk_token_id in pieces:
            raise ModelError(f"label word {word!r} is not in this tokenizer's vocabulary")
        if len(pieces) > 1 and not causal:
            raise ModelError(f"label word {word!r} is {len(pieces)} tokens for this tokenizer "
                             f"({list(pieces)}) and a masked LM scores one [MASK] position: "
                             "choose single-token label words or a causal LM")
        table.append(pieces)
    if len(set(table)) != len(table):
        raise ModelError(f"label words {list(words)} map to the same tokens {table}")
    return tuple(table)


def _table(rows: list[list[int]], width: int) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long).reshape(len(rows), width)


def _tile(table: torch.Tensor, times: int) -> torch.Tensor:
    """``[classes, width]`` -> ``[times * classes, width]``: the table once per prompt."""
    return table.unsqueeze(0).expand(times, -1, -1).reshape(-1, table.shape[-1])


class LabelWords(nn.Module):
    """The label words' token tables (buffers) and the summed log-probability score; see the
    module docstring. ``pad_id`` fills the table slots no word uses (always masked)."""

    targets: torch.Tensor
    target_mask: torch.Tensor
    prefix_ids: torch.Tensor
    prefix_mask: torch.Tensor
    prefix_offsets: torch.Tensor

    def __init__(self, tokens: Sequence[Sequence[int]], pad_id: int) -> None:
        super().__init__()
        words = [tuple(word) for word in tokens]
        self.num_classes = len(words)
        self.longest = longest = max(len(word) for word in words)
        self.single = longest == 1
        free = [longest - len(word) for word in words]
        prefix = [[pad_id] * f + list(word[:-1]) for f, word in zip(free, words, strict=True)]
        prefix_mask = [[0] * f + [1] * (len(word) - 1) for f, word in zip(free, words, strict=True)]
        targets = [[word[0], *[pad_id] * f, *word[1:]] for f, word in zip(free, words, strict=True)]
        target_mask = [[1] + [0] * f + [1] * (len(word) - 1)
                       for f, word in zip(free, words, strict=True)]
        self.register_buffer("targets", _table(targets, longest))
        self.register_buffer("target_mask", _table(target_mask, longest).float())
        self.register_buffer("prefix_ids", _table(prefix, longest - 1))
        self.register_buffer("prefix_mask", _table(prefix_mask, longest - 1))
        self.register_buffer("prefix_offsets", self.prefix_mask.cumsum(-1))

    @property
    def ids(self) -> torch.Tensor:
        """The one token of each word, ``[classes]`` (meaningful when :attr:`single`)."""
        return self.targets[:, 0]

    def rows(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
             position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Left-padded prompts ``[batch, seq]`` -> one row per (prompt, class),
        ``[batch * classes, seq + L - 1]``: the prompt, then the class's word but its last
        token, right-aligned (``input_ids``, ``attention_mask``, ``position_ids``)."""
        batch = input_ids.shape[0]

        def per_class(x: torch.Tensor) -> torch.Tensor:
            return x.unsqueeze(1).expand(-1, self.num_classes, -1).reshape(-1, x.shape[-1])

        ids = torch.cat([per_class(input_ids), _tile(self.prefix_ids, batch)], -1)
        mask = torch.cat([per_class(attention_mask),
                          _tile(self.prefix_mask, batch).to(attention_mask.dtype)], -1)
        offsets = _tile(self.prefix_offsets, batch).to(position_ids.dtype)
        positions = torch.cat([per_class(position_ids),
                               per_class(position_ids[:, -1:]) + offsets], -1)
        return ids, mask, positions

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Summed log-probabilities ``[batch, classes]`` from the logits of :meth:`rows` at
        their last ``L`` positions, ``[batch * classes, L, vocab]``."""
        rows = logits.shape[0] // self.num_classes
        logits = logits.float()
        targets = _tile(self.targets, rows).unsqueeze(-1)
        picked = logits.gather(-1, targets).squeeze(-1) - logits.logsumexp(-1)
        summed = (picked * _tile(self.target_mask, rows)).sum(-1)
        return summed.reshape(rows, self.num_classes)

    def log_probs(self, logits_at: LogitsAt, input_ids: torch.Tensor,
                  attention_mask: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Every class's summed log-probability ``[batch, classes]`` for left-padded prompts,
        with ``logits_at`` running the LM on the :meth:`rows`; differentiable."""
        ids, mask, positions = self.rows(input_ids, attention_mask, position_ids)
        return self.scores(logits_at(ids, mask, positions, self.longest))
