"""The scorer ExecuTorch runs: LoRA as named constants in an external data file, static shapes.

:class:`~lpfl.export.scoring_graph.ScoringGraph` takes the LoRA tensors as inputs, which suits
ONNX Runtime, but splits an XNNPACK graph: a matmul with a runtime weight is not a linear layer,
and with dynamic shapes every reshape in attention has symbolic sizes, which XNNPACK refuses
("Symbolic reshape is not supported"). Each refused op cuts the model into another delegate,
and lowering SmolLM2 that way did not finish in 40 minutes. This module makes the graph that
XNNPACK takes whole (all layers in one delegate; SmolLM2 lowers in about 6 minutes per sequence
length), and keeps the adapter replaceable without re-exporting:

* **LoRA as external constants.** The LoRA matrices are ordinary constant linear weights, tagged
  so that ExecuTorch writes them into a separate data file (``lora.ptd``) instead of the program.
  XNNPACK names each constant by the sha256 of its bytes, so the export first gives every LoRA
  tensor distinct random values and records, per PEFT name, the key its tensor got
  (:func:`lora_keys`). A client swaps the adapter by writing new bytes under the same keys
  (:func:`rewrite_lora_data`) and loading the program with that data; the base, quantized, ships
  once in the program.
* **Static shapes.** Batch and sequence length are fixed per method (``forward_<len>``, one per
  sequence bucket); the client pads a batch to the smallest bucket that holds it.
* **XNNPACK-friendly layers.** Attention runs grouped (queries of a key/value head share one
  ``bmm``; no ``repeat_kv`` expand), RMSNorm's mean is a linear layer with a constant
  ``1/d`` row, and :data:`STATIC_VIEWS` turns ``unsqueeze`` into ``reshape`` and a broadcasting
  ``expand`` into ``cat`` — the forms XNNPACK has kernels for.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from lpfl.artefact import LORA_TAG, TOKEN_INPUTS, pad_tokens, tensor_bytes
from lpfl.errors import ArtefactError
from lpfl.export.scoring_graph import ScoringGraph, attention_mask_4d, class_scores
from lpfl.model.prompt import PromptModel

log = logging.getLogger(__name__)

ATTENTION = "lpfl_grouped"
"""Name under which :func:`grouped_attention` is registered with transformers."""
def grouped_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                      value: torch.Tensor, attention_mask: torch.Tensor | None, scaling: float,
                      dropout: float = 0.0, **_: Any) -> tuple[torch.Tensor, None]:
    """Softmax attention with grouped query heads as two ``bmm`` per layer: the query heads of
    one key/value head are stacked along the sequence, so keys and values are never repeated.
    Same maths as transformers' eager attention (a float additive mask is required)."""
    if attention_mask is None:
        raise ArtefactError("grouped attention needs the 4-D float mask of the scoring graph")
    b, heads, t, d = query.shape
    kv_heads, s = key.shape[1], key.shape[2]
    group = heads // kv_heads
    scores = torch.bmm(query.reshape(b * kv_heads, group * t, d),
                       key.reshape(b * kv_heads, s, d).transpose(1, 2)) * scaling
    scores = scores.reshape(b, kv_heads, group, t, s) + attention_mask.reshape(b, 1, 1, t, s)
    probs = torch.softmax(scores, dim=-1).reshape(b * kv_heads, group * t, s)
    out = torch.bmm(probs, value.reshape(b * kv_heads, s, d)).reshape(b, heads, t, d)
    return out.transpose(1, 2).contiguous(), None


def _register_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, grouped_attention)


class RMSNormAsLinear(nn.Module):
    """RMSNorm whose mean of squares is a linear layer with a constant ``[1, d]`` row of
    ``1/d``: XNNPACK's mean only reduces the inner two dims of 4-D tensors."""

    mean_row: torch.Tensor

    def __init__(self, weight: nn.Parameter, eps: float) -> None:
        super().__init__()
        self.weight = weight
        self.eps = eps
        self.register_buffer("mean_row", torch.full((1, weight.shape[0]), 1.0 / weight.shape[0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = nn.functional.linear(x * x, self.mean_row)
        return self.weight * (x * torch.rsqrt(variance + self.eps))


def _swap_norms(body: nn.Module) -> int:
    swapped = 0
    for name, module in list(body.named_modules()):
        if type(module).__name__.endswith("RMSNorm"):
            parent_name, _, child = name.rpartition(".")
            parent = body.get_submodule(parent_name) if parent_name else body
            eps = getattr(module, "variance_epsilon", getattr(module, "eps", 1e-6))
            setattr(parent, child, RMSNormAsLinear(module.weight, float(eps)))
            swapped += 1
    return swapped


class ConstantLoraScorer(nn.Module):
    """Class scores from ``(input_ids, attention_mask, position_ids)``, with the LoRA
    tensors as constants of a copy of the body (the eager prompt model is not touched).

    The copy's LoRA tensors get distinct seeded random values (see the module docstring);
    :attr:`lora_params` maps each PEFT name to its parameter here. The label-word rows of the
    head stay a float32 constant; the whole head that words of several tokens need
    (:mod:`lpfl.model.verbalizer`) is a linear layer, quantized like the base.
    """

    label_weight: torch.Tensor

    def __init__(self, graph: ScoringGraph, seed: int = 0) -> None:
        super().__init__()
        _register_attention()
        self.body: nn.Module = copy.deepcopy(graph.body)
        config = getattr(self.body, "config", None)
        if config is None or not hasattr(config, "_attn_implementation"):
            raise ArtefactError("this model's body has no transformers attention setting; "
                                "export it with --target onnx")
        config._attn_implementation = ATTENTION
        log.debug("swapped %d RMSNorm layers", _swap_norms(self.body))
        if graph.label_bias is not None:
            raise ArtefactError("label-word heads with a bias are not supported by the "
                                "ExecuTorch exporter; use --target onnx")
        self.words = graph.words
        self.lm_head: nn.Linear | None = None
        if graph.words.single:
            self.register_buffer("label_weight", graph.label_weight.clone())
        else:
            vocab, width = graph.label_weight.shape
            self.lm_head = nn.Linear(width, vocab, bias=False).requires_grad_(False)
            with torch.no_grad():
                self.lm_head.weight.copy_(graph.label_weight)
        params = dict(self.body.named_parameters())
        self.lora_params = {name: params[body_name]
                            for name, body_name in zip(graph.lora_names, graph.body_names,
                                                       strict=True)}
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param in self.lora_params.values():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor) -> torch.Tensor:
        return class_scores(self.words, self._hidden, self._head, input_ids, attention_mask,
                            position_ids)

    def _hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor) -> torch.Tensor:
        out = self.body(input_ids=input_ids, attention_mask=attention_mask_4d(attention_mask),
                        position_ids=position_ids, use_cache=False)
        states: torch.Tensor = out.last_hidden_state
        return states

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.lm_head is None:
            return nn.functional.linear(hidden, self.label_weight)
        head: torch.Tensor = self.lm_head(hidden)
        return head


def static_example(pm: PromptModel, texts: list[str], batch: int,
                   seq_len: int) -> tuple[torch.Tensor, ...]:
    """Token inputs of exactly ``[batch, seq_len]`` (left-padded prompts of ``texts``)."""
    encoded = pm.encoder.encode((texts * batch)[:batch])
    return tuple(pad_tokens([encoded[k] for k in TOKEN_INPUTS], batch, seq_len))


def _unsqueeze_as_reshape(x: torch.Tensor, dim: int) -> torch.Tensor:
    shape = list(x.shape)
    dim = dim if dim >= 0 else dim + len(shape) + 1
    return x.reshape([*shape[:dim], 1, *shape[dim:]])


def _expand_as_cat(x: torch.Tensor, size: list[int], implicit: bool = False) -> torch.Tensor:
    lead = len(size) - x.dim()
    out = x.reshape([1] * lead + list(x.shape)) if lead else x
    for dim, (have, want) in enumerate(zip(out.shape, size, strict=True)):
        if want not in (-1, 1) and have == 1:
            out = torch.cat([out] * int(want), dim=dim)
    return out


STATIC_VIEWS: Mapping[Any, Callable[..., torch.Tensor]] = {
    torch.ops.aten.unsqueeze.default: _unsqueeze_as_reshape,
    torch.ops.aten.expand.default: _expand_as_cat,
}
"""Decompositions for static shapes: XNNPACK takes reshape and cat, not unsqueeze (except
trailing) or expand."""


def tag_lora_constants(program: torch.export.ExportedProgram) -> int:
    """Mark the LoRA constants of ``program`` for the external data file; returns how many."""
    signature = program.graph_signature
    tagged = 0
    for node in program.graph.nodes:
        if node.op != "placeholder":
            continue
        target = (signature.inputs_to_parameters.get(node.name)
                  or signature.inputs_to_buffers.get(node.name) or "")
        if ".lora_" in f".{target}":
            node.meta.setdefault("custom", {})["delegate_constant_tag"] = LORA_TAG
            tagged += 1
    return tagged


def external_lora_tag(node: torch.fx.Node) -> str | None:
    """``ExecutorchBackendConfig.external_constants``: LoRA constants that no delegate took
    go to the same data file."""
    tag: str | None = node.meta.get("custom", {}).get("delegate_constant_tag")
    return tag


def lora_keys(data: bytes, scorer: ConstantLoraScorer) -> dict[str, str]:
    """PEFT name -> key of that tensor in the data file ``data``, found by its (distinct)
    bytes; an ArtefactError if a LoRA tensor is missing from the file."""
    from executorch.exir._serialize._cord import Cord
    from executorch.extension.flat_tensor.serialize.serialize import FlatTensorSerializer

    payload = FlatTensorSerializer().deserialize(Cord(data))
    by_bytes = {bytes(payload.buffers[entry.buffer_index]): key
                for key, entry in payload.named_data.items()}
    keys = {name: by_bytes.get(tensor_bytes(param))
            for name, param in scorer.lora_params.items()}
    missing = [name for name, key in keys.items() if key is None]
    if missing:
        raise ArtefactError(f"LoRA tensors {missing[:3]} are not in the program's data file; "
                            "the exporter's tagging does not fit this ExecuTorch version")
    return {name: str(key) for name, key in keys.items()}
