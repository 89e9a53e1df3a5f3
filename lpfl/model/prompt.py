"""The prompt model: pattern + verbalizer on top of a language model.

A pattern turns a text into a prompt and a verbalizer names one label word per class. The class
scores are the LM's logits of the label words: at the last position for a causal LM (asking the
head for that position only, ``logits_to_keep=1``), at the ``[MASK]`` position for a masked LM.
A causal LM may have label words of several tokens: then every class scores the summed
log-probability of its word's tokens (:mod:`lpfl.model.verbalizer`), one forward row per class.
Everything above this module (soft labels, training, federation) sees only class logits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from lpfl.config import PromptSettings
from lpfl.errors import ModelError
from lpfl.model.loading import BaseModel
from lpfl.model.verbalizer import LabelWords, label_tokens
from lpfl.progress import bar

log = logging.getLogger(__name__)

MASK_PLACEHOLDER = "[MASK]"


def lm_token_loss(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  row_weights: torch.Tensor | None = None) -> torch.Tensor:
    """The mean next-token cross-entropy of a causal LM over the tokens that are real and follow
    a real token, in fixed shapes (no boolean indexing), so a traced program computes it too.

    ``row_weights`` ``[batch]`` scale whole rows (0 drops a filler row of a fixed-shape batch).
    """
    vocab = logits.shape[-1]
    losses = F.cross_entropy(logits[:, :-1].reshape(-1, vocab).float(),
                             input_ids[:, 1:].reshape(-1), reduction="none")
    mask = attention_mask[:, :-1] * attention_mask[:, 1:]
    if row_weights is not None:
        mask = mask * row_weights[:, None]
    mask = mask.reshape(-1).to(losses.dtype)
    return (losses * mask).sum() / mask.sum().clamp_min(1.0)


class PromptEncoder:
    """Turns texts into model inputs for one pattern: no torch model needed.

    It fits each text into ``max_length`` (the pattern is kept whole), pads on the left for a
    causal LM (the label word follows the last token; ``position_ids`` give each real token its
    unpadded position) and on the right for a masked LM (with the ``[MASK]`` index). An
    on-device scorer builds one from an exported artefact's tokenizer files.
    ``label_tokens`` are the label words' token ids, one tuple per class (an artefact's manifest
    records them; several tokens per word only for a causal LM).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt: PromptSettings,
                 max_length: int, causal: bool) -> None:
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.max_length = max_length
        self.causal = causal
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if not causal:
            if MASK_PLACEHOLDER not in prompt.pattern:
                raise ModelError(f"a masked LM needs {MASK_PLACEHOLDER} in prompt.pattern, e.g. "
                                 "'Review: {text} All in all, it was [MASK].'")
            if self.tokenizer.mask_token is None:
                raise ModelError("this masked LM's tokenizer has no mask token")
        self.label_tokens = label_tokens(self.tokenizer, prompt.label_words, causal)
        prefix, suffix = prompt.pattern.split("{text}")
        self._prefix = prefix
        self._suffix = suffix.replace(MASK_PLACEHOLDER, self.tokenizer.mask_token or "")
        frame = self.tokenizer(self._prefix + self._suffix)["input_ids"]
        self._text_budget = max_length - len(frame)
        if self._text_budget < 4:
            raise ModelError(f"model.max_length={max_length} leaves {self._text_budget} tokens "
                             "for the text after the pattern: raise it")

    @property
    def num_classes(self) -> int:
        return len(self.label_tokens)

    def label_words(self) -> LabelWords:
        """The label words' token tables and scorer (:mod:`lpfl.model.verbalizer`)."""
        return LabelWords(self.label_tokens, int(self.tokenizer.pad_token_id))

    def for_pattern(self, pattern: str) -> PromptEncoder:
        """An encoder for another pattern with the same tokenizer, label words and length (a
        program scores any such prompt: the pattern is text, the label words are in the graph)."""
        if pattern == self.prompt.pattern:
            return self
        prompt = PromptSettings(pattern, self.prompt.label_words)
        return PromptEncoder(self.tokenizer, prompt, self.max_length, self.causal)

    def _fit(self, text: str) -> str:
        """Shorten ``text`` so the whole prompt fits ``max_length`` (the pattern is kept whole)."""
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) <= self._text_budget:
            return text
        return str(self.tokenizer.decode(ids[: self._text_budget]))

    def prompts(self, texts: Sequence[str]) -> list[str]:
        return [self._prefix + self._fit(t) + self._suffix for t in texts]

    def encode(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenized prompts (CPU tensors): left-padded for a causal LM, right-padded with the
        mask positions for a masked LM."""
        self.tokenizer.padding_side = "left" if self.causal else "right"
        batch = self.tokenizer(self.prompts(texts), return_tensors="pt", padding=True,
                               truncation=True, max_length=self.max_length)
        out = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if self.causal:
            # Left padding shifts positions: give each real token its unpadded position.
            out["position_ids"] = (out["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        else:
            is_mask = out["input_ids"] == self.tokenizer.mask_token_id
            if not bool((is_mask.sum(-1) == 1).all()):
                raise ModelError("every prompt must contain exactly one mask token after "
                                 "truncation; lower the text length or raise model.max_length")
            out["mask_index"] = is_mask.float().argmax(-1)
        return out


def score_in_length_order(encoder: PromptEncoder, texts: Sequence[str], batch_size: int,
                          score_batch: Callable[[dict[str, torch.Tensor]], torch.Tensor]
                          ) -> torch.Tensor:
    """``score_batch`` over ``texts`` in batches of prompts of similar length, so little of a
    batch is padding (MR prompts range from about 15 to 67 tokens); rows come back in the order
    of ``texts``, shape ``[len(texts), num_classes]``."""
    if not texts:
        return torch.empty(0, encoder.num_classes)
    lengths = [len(ids) for ids in encoder.tokenizer(encoder.prompts(texts))["input_ids"]]
    order = sorted(range(len(texts)), key=lengths.__getitem__)
    starts = range(0, len(order), batch_size)
    chunks = [score_batch(encoder.encode([texts[i] for i in order[start : start + batch_size]]))
              for start in bar(starts, len(starts), f"scoring {len(texts)} texts")]
    scores = torch.cat(chunks).float().cpu()
    out = torch.empty_like(scores)
    out[torch.tensor(order)] = scores
    return out


class PromptModel:
    """Scores texts per class with a (possibly adapter-wrapped) language model.

    ``network`` is the module that is called; it starts as the base model and is replaced by a
    PEFT wrapper when LoRA is attached (see :mod:`lpfl.model.adapters`). Tokenization is the
    :class:`PromptEncoder`'s (``encoder``).
    """

    def __init__(self, base: BaseModel, prompt: PromptSettings, max_length: int,
                 device: str = "cpu") -> None:
        self.base = base
        self.device = torch.device(device)
        base.model.to(self.device)  # type: ignore[arg-type]
        self.network: nn.Module = base.model
        self.prompt = prompt
        self.max_length = max_length
        self.tokenizer = base.tokenizer
        self.causal = base.kind == "causal"
        self.encoder = PromptEncoder(self.tokenizer, prompt, max_length, self.causal)
        self.label_words = self.encoder.label_words().to(self.device)

    @property
    def num_classes(self) -> int:
        return self.encoder.num_classes

    def prompts(self, texts: Sequence[str]) -> list[str]:
        return self.encoder.prompts(texts)

    def encode(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenized prompts on this model's device (see :meth:`PromptEncoder.encode`)."""
        return self.on_device(self.encoder.encode(texts))

    def on_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``batch`` (as :meth:`PromptEncoder.encode` gives it) moved to this model's device."""
        return {k: v.to(self.device) for k, v in batch.items()}

    def class_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Class scores, shape ``[batch, num_classes]``; differentiable. The label-word logits
        when every word is one token (their softmax over the classes equals that of the words'
        log-probabilities); for a causal LM with a word of several tokens, every class's summed
        log-probability (:mod:`lpfl.model.verbalizer`)."""
        words = self.label_words
        if self.causal and not words.single:
            return words.log_probs(self._logits_at, batch["input_ids"], batch["attention_mask"],
                                   batch["position_ids"])
        label_ids = words.ids
        if self.causal:
            last = self._logits_at(batch["input_ids"], batch["attention_mask"],
                                   batch["position_ids"], 1)
            return last[:, -1, :].index_select(-1, label_ids)
        out = self.network(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        rows = torch.arange(batch["input_ids"].shape[0], device=self.device)
        masked: torch.Tensor = out.logits[rows, batch["mask_index"]].index_select(-1, label_ids)
        return masked

    def _logits_at(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   position_ids: torch.Tensor, keep: int) -> torch.Tensor:
        out = self.network(input_ids=input_ids, attention_mask=attention_mask,
                           position_ids=position_ids, logits_to_keep=keep, use_cache=False)
        logits: torch.Tensor = out.logits
        return logits

    def lm_loss(self, batch: dict[str, torch.Tensor],
                row_weights: torch.Tensor | None = None) -> torch.Tensor:
        """The mean next-token cross-entropy over the real (unpadded) tokens of ``batch``'s
        prompts (as :meth:`encode` makes them; ``row_weights`` as in :func:`lm_token_loss`);
        differentiable. Causal LMs only."""
        if not self.causal:
            raise ModelError("the language-model loss (soft_labels.lm_weight) needs a causal "
                             "LM; set it to 0 for a masked LM")
        out = self.network(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           position_ids=batch["position_ids"], use_cache=False)
        return lm_token_loss(out.logits, batch["input_ids"], batch["attention_mask"],
                             row_weights)

    @torch.no_grad()
    def score(self, texts: Sequence[str], batch_size: int = 32,
              pattern: str | None = None) -> torch.Tensor:
        """Class logits for many texts, in inference mode, shape ``[len(texts), num_classes]``;
        under ``pattern`` (same label words) instead of the model's own when given."""
        was_training = self.network.training
        self.network.eval()
        encoder = self.encoder if pattern is None else self.encoder.for_pattern(pattern)
        try:
            return score_in_length_order(
                encoder, texts, batch_size,
                lambda batch: self.class_logits(self.on_device(batch)))
        finally:
            self.network.train(was_training)
