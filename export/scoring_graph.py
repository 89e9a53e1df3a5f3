"""The graph a device runs to soft-label: the prompt model's scorer with LoRA as inputs.

``ScoringGraph`` maps ``(input_ids, attention_mask, position_ids, *lora)`` to the class scores
``[batch, classes]`` of a left-padded causal LM, exactly what
:meth:`lpfl.model.prompt.PromptModel.class_logits` computes. Two choices make it a good program:

* The LoRA tensors are inputs (substituted with ``torch.func.functional_call``), so the base
  weights stay constants that can be quantized and delegated, and a client feeds each round's
  global adapter without re-exporting; the base ships once.
* When every label word is one token only the label-word rows of the LM head are kept (a
  ``[classes, hidden]`` matrix instead of ``[vocab, hidden]``), which saves the vocabulary-wide
  matmul and its weights. A word of several tokens needs log-probabilities, hence the whole head
  at the last ``L`` positions of one row per (prompt, class) (:mod:`lpfl.model.verbalizer`); the
  graph then stores its own copy of the head.

The attention mask is built here as a 4-D additive mask (causal, real keys only, every position
may see itself so no row is empty); transformers uses a 4-D mask as is, which keeps its
vmap-based mask construction out of the exported graph.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from peft import PeftModel
from torch import nn
from torch.func import functional_call
from transformers import PreTrainedModel

from lpfl.artefact import TOKEN_INPUTS
from lpfl.errors import ModelError
from lpfl.model.adapters import trainable_state
from lpfl.model.prompt import PromptModel
from lpfl.model.verbalizer import LabelWords

log = logging.getLogger(__name__)

MAX_BATCH = 64
"""Largest batch a program accepts (the batch dimension is dynamic up to this)."""
EXAMPLE_TEXTS = ("a good movie", "an awful , boring and long movie")
"""The prompts every export traces with."""


def attention_mask_4d(attention_mask: torch.Tensor) -> torch.Tensor:
    """``[batch, 1, seq, seq]`` additive float mask: 0 where a query may attend (causal, real
    keys, and always itself), the float minimum elsewhere. Arithmetic only (no ``where``), so
    XNNPACK takes the attention whole."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    causal = positions[None, :] <= positions[:, None]
    diagonal = positions[None, :] == positions[:, None]
    allowed = (causal[None] & attention_mask[:, None, :].bool()) | diagonal[None]
    blocked = 1.0 - allowed[:, None].float()
    return blocked * torch.finfo(torch.float32).min


Hidden = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(input_ids, attention_mask, position_ids)`` -> the body's last hidden states."""


def class_scores(words: LabelWords, hidden: Hidden, head: Callable[[torch.Tensor], torch.Tensor],
                 input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 position_ids: torch.Tensor) -> torch.Tensor:
    """``[batch, classes]`` from a model body and its head (label-word rows when every word is
    one token, else the whole head): the head at the last position, or every class's summed
    log-probability (:meth:`~lpfl.model.verbalizer.LabelWords.log_probs`)."""
    if words.single:
        return head(hidden(input_ids, attention_mask, position_ids)[:, -1, :])
    return words.log_probs(lambda ids, mask, positions, keep: head(
        hidden(ids, mask, positions)[:, -keep:, :]), input_ids, attention_mask, position_ids)


class ScoringGraph(nn.Module):
    """Class scores of a LoRA-wrapped causal LM, with the LoRA tensors as inputs.

    ``lora_names`` are the PEFT state-dict names (as in
    :func:`lpfl.model.adapters.trainable_state`), in the order :meth:`forward` takes them.
    """

    label_weight: torch.Tensor
    label_bias: torch.Tensor | None

    def __init__(self, pm: PromptModel) -> None:
        super().__init__()
        if not isinstance(pm.network, PeftModel):
            raise ModelError("the scoring graph takes LoRA tensors as inputs: attach LoRA first "
                             "(lpfl.model.adapters.attach_lora)")
        if not pm.causal:
            raise ModelError("export supports causal LMs (label word at the last position); "
                             f"{pm.base.model_id} is a masked LM: use --backend eager for it")
        lm: PreTrainedModel = pm.network.get_base_model()  # type: ignore[assignment]
        self.body: nn.Module = lm.base_model
        self.words = pm.label_words
        head: nn.Module = lm.get_output_embeddings()
        rows = self.words.ids if self.words.single else slice(None)
        weight: torch.Tensor = head.weight  # type: ignore[assignment]
        self.register_buffer("label_weight", weight.detach()[rows].clone())
        """The head rows scored: the label words' when each is one token, else all."""
        bias: torch.Tensor | None = getattr(head, "bias", None)
        self.register_buffer("label_bias", None if bias is None else bias.detach()[rows].clone())
        self.lora_names = list(trainable_state(pm))
        self.lora_shapes = {n: tuple(t.shape) for n, t in trainable_state(pm).items()}
        self.body_names = self._lora_body_names(pm)
        """The body's parameter name of each LoRA tensor, in ``lora_names`` order."""

    def _lora_body_names(self, pm: PromptModel) -> list[str]:
        """The body's parameter name of each LoRA tensor, in ``lora_names`` order.

        PEFT's state dict drops the adapter name (``.default``) from the parameter name; map
        back through the parameter objects so no naming rule is guessed."""
        adapter = f".{pm.network.active_adapter}"  # type: ignore[union-attr]
        by_id = {id(p): name for name, p in self.body.named_parameters()}
        in_network = {name.replace(adapter, ""): by_id[id(p)]
                      for name, p in pm.network.named_parameters() if id(p) in by_id}
        missing = [n for n in self.lora_names if n not in in_network]
        if missing:
            raise ModelError(f"LoRA tensors {missing[:3]} are not inside the model body; this "
                             "architecture's head is not supported by the exporter")
        return [in_network[n] for n in self.lora_names]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor, *lora: torch.Tensor) -> torch.Tensor:
        params = dict(zip(self.body_names, lora, strict=True))

        def hidden(ids: torch.Tensor, mask: torch.Tensor,
                   positions: torch.Tensor) -> torch.Tensor:
            out = functional_call(self.body, params, args=(), kwargs={
                "input_ids": ids, "attention_mask": attention_mask_4d(mask),
                "position_ids": positions, "use_cache": False})
            states: torch.Tensor = out.last_hidden_state
            return states

        return class_scores(self.words, hidden, self._head, input_ids, attention_mask,
                            position_ids)

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(hidden, self.label_weight, self.label_bias)


def example_inputs(pm: PromptModel, graph: ScoringGraph) -> tuple[torch.Tensor, ...]:
    """Sample inputs for tracing: two short prompts and the model's current LoRA tensors."""
    batch = pm.encoder.encode(list(EXAMPLE_TEXTS))
    state = trainable_state(pm)
    return (*(batch[k] for k in TOKEN_INPUTS), *(state[n] for n in graph.lora_names))


def dynamic_shapes(graph: ScoringGraph, max_seq_len: int) -> tuple[object, ...]:
    """Batch (1..MAX_BATCH) and sequence (2..max_seq_len) are dynamic; LoRA shapes are fixed."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    seq = torch.export.Dim("seq", min=2, max=max_seq_len)
    tokens = {0: batch, 1: seq}
    return (tokens, tokens, tokens, (None,) * len(graph.lora_names))
