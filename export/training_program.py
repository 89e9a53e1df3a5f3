"""An ExecuTorch training program for the prompt model with LoRA: forward + backward in one file.

The program has two plain (forward-only) ExecuTorch methods. ``forward`` takes the LoRA
tensors, in :func:`lora_names` order, then one fixed-shape batch (``input_ids``,
``attention_mask``, ``position_ids``, ``targets`` ``[B, C]``, ``weights`` ``[B]``), and returns the
weighted mean cross-entropy against the targets (the loss :func:`lpfl.training.train_steps`
minimises), the class logits and the gradients of the LoRA tensors; with label words of several
tokens the class logits are their summed log-probabilities (:mod:`lpfl.model.verbalizer`).
``lm_gradients`` takes the LoRA tensors and a batch of prompts (``input_ids``,
``attention_mask``, ``position_ids``, ``weights``) and returns the language-model loss on them
(:func:`lpfl.model.prompt.lm_token_loss`, trained with ``soft_labels.lm_weight``) and its LoRA
gradients. Both share the program's constants (the frozen base is stored once). The trainer
(:mod:`lpfl.program_trainer`) keeps the adapter, feeds it in at every step and applies the
optimizer to the returned gradients.

Why not ExecuTorch's training flow (``_export_forward_backward`` + ``TrainingModule``): XNNPACK
cannot take that joint graph in ExecuTorch 1.5.1 (it returns forward activations the backward
reuses, which the delegate refuses as pass-through outputs, and per-op lowering breaks the
training metadata), so the whole step ran on portable kernels at 2.5-3.6x the eager step. Here
the backward is traced into an ordinary graph (``make_fx`` records what autograd runs), and
XNNPACK takes every GEMM, forward and backward, like in an inference program.

Stages, each a function testable alone:

1. :func:`build_loss_module`: the prompt model's class logits plus the loss, with the frozen base
   optionally stored quantized (``int8`` per output channel, ``4bit`` per group of 32, packed two
   to a byte). Quantized weights are buffers that are de-quantized in ``forward``, so the program
   stores integer constants while the LoRA tensors stay float32.
2. :func:`trace_gradients`: forward and backward as one ATen graph, LoRA tensors as inputs.
3. :func:`export_gradients`: ``torch.export``, core ATen, :func:`transpose_free_matmuls`.
4. :func:`lower`: XNNPACK with runtime weights for both methods, then ``to_executorch``.
5. :func:`save`: writes the ``.pte``.

Shapes are fixed (``batch_size`` x ``max_seq_len``): the trainer left-pads every batch to
``max_seq_len`` and fills a short batch with weight-0 rows.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from lpfl.errors import ModelError
from lpfl.model.prompt import PromptModel
from lpfl.program_trainer import LM_METHOD, METHOD
from lpfl.training import example_losses, weighted_loss

if TYPE_CHECKING:
    from executorch.exir import ExecutorchProgramManager

log = logging.getLogger(__name__)

QUANT_MODES = ("none", "int8", "4bit")
GROUP_SIZE = 32  # 4-bit: one scale per 32 weights of a row
PARAMETER_PREFIX = "network."  # the loss module's attribute holding the PEFT model
ADAPTER = "default"  # PEFT's adapter name; get_peft_model_state_dict drops ".default"


class PromptLoss(nn.Module):
    """(input_ids, attention_mask, position_ids, targets, weights) -> (loss, class logits).

    ``pm.network`` is registered as the ``network`` submodule, so program parameter names are
    ``network.`` + the network's own parameter names.
    """

    def __init__(self, pm: PromptModel) -> None:
        super().__init__()
        if not pm.causal:
            raise ModelError("the training program supports causal LMs only (model.source "
                             "tiny-llama, smollm2 or another causal GGUF/folder)")
        self.pm = copy.copy(pm)  # shares the network; class_logits calls self.pm.network
        self.network = pm.network

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor, targets: torch.Tensor,
                weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.pm.class_logits({"input_ids": input_ids, "attention_mask": attention_mask,
                                       "position_ids": position_ids})
        loss = weighted_loss(example_losses(logits, targets), weights)
        return loss, logits.detach()


class PromptLmLoss(nn.Module):
    """(input_ids, attention_mask, position_ids, weights) -> the prompt model's LM loss
    (:meth:`~lpfl.model.prompt.PromptModel.lm_loss`), on the network of a :class:`PromptLoss`
    (the same parameters under the same names)."""

    def __init__(self, loss: PromptLoss) -> None:
        super().__init__()
        self.pm = loss.pm  # calls self.pm.network, which is self.network
        self.network = loss.network

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return self.pm.lm_loss({"input_ids": input_ids, "attention_mask": attention_mask,
                                "position_ids": position_ids}, weights)


def _int8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row: (codes ``[out, in]`` int8, scales ``[out, 1]`` float)."""
    scale = weight.abs().amax(-1, keepdim=True).clamp_min(1e-12) / 127.0
    codes = torch.round(weight / scale).clamp(-127, 127).to(torch.int8)
    return codes, scale


def _int4_groups(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric 4-bit per group of :data:`GROUP_SIZE` along a row, two codes per byte.

    Returns (packed ``[out, in // 2]`` uint8, scales ``[out, in // GROUP_SIZE]`` float); a byte
    holds ``code + 8`` of an even column in its low nibble and of the next column in its high.
    """
    rows, cols = weight.shape
    groups = weight.reshape(rows, cols // GROUP_SIZE, GROUP_SIZE)
    scale = groups.abs().amax(-1, keepdim=True).clamp_min(1e-12) / 7.0
    codes = (torch.round(groups / scale).clamp(-8, 7) + 8).to(torch.uint8).reshape(rows, cols)
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4)
    return packed, scale[..., 0]


def dequantize(codes: torch.Tensor, scale: torch.Tensor, mode: str) -> torch.Tensor:
    """Float32 rows from codes and scales of any leading shape (a weight, or gathered rows).

    Only ops with portable ExecuTorch kernels: cast, mul, bitwise and, bitwise right shift (the
    ``>>`` operator would export as ``__rshift__``, which has no kernel).
    """
    if mode == "int8":
        return codes.to(torch.float32) * scale
    low = torch.bitwise_and(codes, 15)
    high = torch.bitwise_right_shift(codes, 4)
    values = torch.stack([low, high], dim=-1).to(torch.float32) - 8.0
    grouped = values.reshape(*scale.shape, GROUP_SIZE) * scale.unsqueeze(-1)
    return grouped.reshape(*codes.shape[:-1], -1)


class QuantizedWeight(nn.Module):
    """A frozen weight matrix stored as integer codes (buffers ``codes`` and ``scale``)."""

    codes: torch.Tensor
    scale: torch.Tensor

    def __init__(self, weight: torch.Tensor, mode: str) -> None:
        super().__init__()
        self.mode = mode
        codes, scale = _int4_groups(weight) if mode == "4bit" else _int8_rows(weight)
        self.register_buffer("codes", codes)
        self.register_buffer("scale", scale)

    def forward(self) -> torch.Tensor:
        """The whole matrix in float32."""
        return dequantize(self.codes, self.scale, self.mode)


class QuantizedLinear(nn.Module):
    """``nn.Linear`` with a quantized frozen weight (the bias, if any, stays float)."""

    def __init__(self, linear: nn.Linear, weight: QuantizedWeight) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.qweight = weight
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.qweight(), self.bias)


class QuantizedEmbedding(nn.Module):
    """``nn.Embedding`` with a quantized table: gathers the rows' codes and scales first, then
    de-quantizes only those, so a step never expands the whole table."""

    def __init__(self, embedding: nn.Embedding, weight: QuantizedWeight) -> None:
        super().__init__()
        self.qweight = weight
        self.embedding_dim = embedding.embedding_dim
        self.num_embeddings = embedding.num_embeddings
        self.padding_idx = embedding.padding_idx

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        weight = self.qweight
        return dequantize(F.embedding(ids, weight.codes), F.embedding(ids, weight.scale),
                          weight.mode)


def _fits(module: nn.Module, mode: str) -> bool:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.requires_grad or weight.dim() != 2:
        return False
    return mode != "4bit" or weight.shape[1] % GROUP_SIZE == 0


def quantize_frozen(network: nn.Module, mode: str) -> dict[str, int]:
    """Replace every frozen ``nn.Linear`` and ``nn.Embedding`` of ``network`` in place by its
    quantized version; tied weights (embedding and LM head) share one quantized copy. Returns
    how many of each were replaced. 4-bit needs rows that are a multiple of
    :data:`GROUP_SIZE` long; other matrices stay float."""
    if mode not in ("int8", "4bit"):
        raise ValueError(f"quant={mode!r}: use one of {QUANT_MODES}")
    shared: dict[int, QuantizedWeight] = {}
    counts = {"linear": 0, "embedding": 0}
    swaps: list[tuple[nn.Module, str, nn.Module]] = []
    for parent in network.modules():
        for name, child in parent.named_children():
            is_linear = type(child) is nn.Linear
            is_embedding = type(child) is nn.Embedding
            if not (is_linear or is_embedding) or not _fits(child, mode):
                continue
            weight: torch.Tensor = child.weight  # type: ignore[assignment]
            key = id(weight)
            if key not in shared:
                shared[key] = QuantizedWeight(weight.detach(), mode)
            quantized: nn.Module
            if is_linear:
                assert isinstance(child, nn.Linear)
                quantized = QuantizedLinear(child, shared[key])
                counts["linear"] += 1
            else:
                assert isinstance(child, nn.Embedding)
                quantized = QuantizedEmbedding(child, shared[key])
                counts["embedding"] += 1
            swaps.append((parent, name, quantized))
    for parent, name, quantized in swaps:
        setattr(parent, name, quantized)
    return counts


def build_loss_module(pm: PromptModel, quant: str = "none") -> PromptLoss:
    """The module to export; with ``quant`` its frozen base is a quantized copy (``pm`` itself
    is left untouched, so eager training keeps its float weights)."""
    if quant not in QUANT_MODES:
        raise ValueError(f"quant={quant!r}: use one of {QUANT_MODES}")
    if any(isinstance(m, nn.Dropout) and m.p > 0 for m in pm.network.modules()):
        raise ModelError("the training program has no dropout (ExecuTorch has no random "
                         "kernels): set lora.dropout=0")
    if quant == "none":
        module = PromptLoss(pm)
    else:
        quantized = copy.copy(pm)
        quantized.network = copy.deepcopy(pm.network)
        counts = quantize_frozen(quantized.network, quant)
        log.info("quantized %d linear and %d embedding weights to %s", counts["linear"],
                 counts["embedding"], quant)
        module = PromptLoss(quantized)
    return module.eval()


def example_inputs(pm: PromptModel, batch_size: int,
                   max_seq_len: int) -> tuple[torch.Tensor, ...]:
    """Inputs of the program's fixed shapes (the values only guide tracing)."""
    ids = torch.full((batch_size, max_seq_len), pm.encoder.label_tokens[0][0], dtype=torch.long)
    mask = torch.ones(batch_size, max_seq_len, dtype=torch.long)
    positions = torch.arange(max_seq_len).expand(batch_size, max_seq_len).contiguous()
    targets = torch.full((batch_size, pm.num_classes), 1.0 / pm.num_classes)
    weights = torch.ones(batch_size)
    return ids, mask, positions, targets, weights


def lm_example_inputs(pm: PromptModel, batch_size: int,
                      max_seq_len: int) -> tuple[torch.Tensor, ...]:
    """Inputs of the ``lm_gradients`` method: the classification batch without targets."""
    ids, mask, positions, _, weights = example_inputs(pm, batch_size, max_seq_len)
    return ids, mask, positions, weights


@contextlib.contextmanager
def eager_attention(network: nn.Module) -> Iterator[None]:
    """Run the HF model with its plain (matmul + softmax) attention while inside.

    With the SDPA attention the exported graph reshapes SDPA's output with a ``view`` that no
    longer fits its strides once the backward decomposes SDPA, and the export fails.
    """
    config = getattr(network, "config", None)
    if config is None:
        yield
        return
    before = config._attn_implementation
    config._attn_implementation = "eager"
    try:
        yield
    finally:
        config._attn_implementation = before


def peft_name(program_name: str) -> str:
    """The PEFT state-dict name of a loss-module parameter (the rule of
    ``peft.utils.get_peft_model_state_dict``: drop the adapter name)."""
    return program_name.removeprefix(PARAMETER_PREFIX).replace(f".{ADAPTER}", "")


def lora_names(module: nn.Module) -> list[str]:
    """The trainable (LoRA) parameters of ``module`` in the program's input order: sorted by
    PEFT name, the order in which a trainer sorts the manifest's ``lora_shapes``."""
    trainable = [n for n, p in module.named_parameters() if p.requires_grad]
    return sorted(trainable, key=peft_name)


def lora_tensors(module: nn.Module, names: Sequence[str]) -> tuple[torch.Tensor, ...]:
    """The current values of the LoRA parameters ``names`` (detached): the program's first
    inputs when tracing."""
    parameters = dict(module.named_parameters())
    return tuple(parameters[n].detach() for n in names)


GradientFunction = Callable[..., tuple[torch.Tensor, ...]]


def gradient_function(module: nn.Module, names: Sequence[str]) -> GradientFunction:
    """``(*lora, *batch) -> (*outputs, *lora_gradients)``: the LoRA tensors are inputs, so the
    gradients are ordinary outputs of a forward-only graph. ``module`` returns the loss, or the
    loss first in a tuple (:class:`PromptLoss`: loss and class logits)."""
    count = len(names)

    def gradients(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        lora = args[:count]
        result = torch.func.functional_call(module, dict(zip(names, lora, strict=True)),
                                            args[count:], strict=False)
        outputs = result if isinstance(result, tuple) else (result,)
        return (*outputs, *torch.autograd.grad(outputs[0], lora))

    return gradients


def trace_gradients(module: nn.Module, names: Sequence[str],
                    inputs: tuple[torch.Tensor, ...]) -> torch.fx.GraphModule:
    """The forward and the backward as one ATen graph (``make_fx`` records the ops that autograd
    runs), under the MATH attention backend and with eager attention.

    ``silu_backward`` is decomposed here: the ExecuTorch runtime has no kernel for it.
    """
    from torch._decomp import get_decompositions
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.nn.attention import SDPBackend, sdpa_kernel

    lora = [t.clone().requires_grad_() for t in lora_tensors(module, names)]
    table = get_decompositions([torch.ops.aten.silu_backward.default])
    network: nn.Module = module.network  # type: ignore[assignment]
    with sdpa_kernel([SDPBackend.MATH]), eager_attention(network), torch.enable_grad():
        graph: torch.fx.GraphModule = make_fx(gradient_function(module, names),
                                              decomposition_table=table)(*lora, *inputs)  # type: ignore[arg-type]
    return graph


def export_gradients(graph: torch.fx.GraphModule,
                     example: tuple[torch.Tensor, ...]) -> torch.export.ExportedProgram:
    """``torch.export`` of the traced graph (its frozen weights become program constants),
    decomposed to core ATen, with :func:`transpose_free_matmuls` applied."""
    ep = torch.export.export(graph, example, strict=False)
    return transpose_free_matmuls(ep.run_decompositions())


def _is_transpose(node: object) -> bool:
    return (isinstance(node, torch.fx.Node) and node.target == torch.ops.aten.permute.default
            and list(node.args[1]) == [1, 0])  # type: ignore[arg-type]


def _broadcast_transpose_of(node: torch.fx.Node) -> torch.fx.Node | None:
    """``W`` if ``node`` is ``W.T`` expanded over a batch (how ``matmul`` feeds ``bmm``)."""
    if node.target == torch.ops.aten.view.default:
        node = node.args[0]  # type: ignore[assignment]
    if (node.target == torch.ops.aten.expand.default and len(node.args[1]) == 3  # type: ignore[arg-type]
            and _is_transpose(node.args[0])):
        return node.args[0].args[0]  # type: ignore[union-attr,return-value]
    return None


def _call(graph: torch.fx.Graph, op: Any, *args: Any) -> torch.fx.Node:
    """A new node with its fake value, which later passes read for shapes."""
    node = graph.call_function(op, args)
    node.meta["val"] = op(*(a.meta["val"] if isinstance(a, torch.fx.Node) else a for a in args))
    return node


def _unbatched(graph: torch.fx.Graph, bmm: torch.fx.Node, op: Any,
               weight: torch.fx.Node) -> torch.fx.Node:
    """``op(x, weight)`` on the rows of every batch at once, shaped like ``bmm``'s output (``x``
    copied first when it is a strided slice, e.g. the last positions of each row)."""
    x: torch.fx.Node = bmm.args[0]  # type: ignore[assignment]
    with graph.inserting_before(bmm):
        if not x.meta["val"].is_contiguous():
            x = _call(graph, torch.ops.aten.clone.default, x)
        rows = _call(graph, torch.ops.aten.view.default, x, [-1, x.meta["val"].shape[-1]])
        return _call(graph, torch.ops.aten.view.default, _call(graph, op, rows, weight),
                     list(bmm.meta["val"].shape))


def transpose_free_matmuls(ep: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """Drop the weight transposes of the linear layers, in place; returns ``ep``.

    ExecuTorch has no strided views, so every ``permute`` or ``expand`` is a copy: the traced
    forward-backward graph copies each weight matrix into its transpose for ``mm(x, W.T)`` and
    transposes that back for the input gradient ``mm(g, W)``; the LM head (a linear on a sliced,
    non-contiguous hidden state) even becomes a ``bmm`` against ``W.T`` copied once per batch
    row. Here ``permute(permute(W))`` becomes ``W``, ``mm(x, permute(W))`` becomes
    ``linear(x, W)`` (XNNPACK's fully connected reads ``W`` as it is), and the LM head's two
    ``bmm`` become ``linear`` and ``mm`` on the rows.
    """
    graph = ep.graph_module.graph
    for node in list(graph.nodes):
        if _is_transpose(node) and _is_transpose(node.args[0]):
            node.replace_all_uses_with(node.args[0].args[0])  # type: ignore[union-attr]
    for node in list(graph.nodes):
        if node.target == torch.ops.aten.mm.default and _is_transpose(node.args[1]):
            with graph.inserting_before(node):
                fused = graph.call_function(torch.ops.aten.linear.default,
                                            (node.args[0], node.args[1].args[0]))  # type: ignore[union-attr]
            fused.meta = dict(node.meta)
            node.replace_all_uses_with(fused)
        elif node.target == torch.ops.aten.bmm.default:
            rhs: torch.fx.Node = node.args[1]  # type: ignore[assignment]
            weight = _broadcast_transpose_of(rhs)
            if weight is not None:  # x @ W.T
                node.replace_all_uses_with(
                    _unbatched(graph, node, torch.ops.aten.linear.default, weight))
            elif rhs.target == torch.ops.aten.permute.default and list(rhs.args[1]) == [0, 2, 1]:  # type: ignore[arg-type]
                weight = _broadcast_transpose_of(rhs.args[0])  # type: ignore[arg-type]
                if weight is not None:  # g @ W
                    node.replace_all_uses_with(
                        _unbatched(graph, node, torch.ops.aten.mm.default, weight))
    graph.eliminate_dead_code()
    ep.graph_module.recompile()
    return ep


def lower(methods: dict[str, torch.export.ExportedProgram]) -> ExecutorchProgramManager:
    """Edge dialect, XNNPACK for every GEMM and the element-wise ops it has, portable kernels
    for the rest; one program with a method per entry of ``methods``.

    The weight matrices are runtime tensors to XNNPACK
    (``force_non_static_weights_for_f32_linear``): a de-quantized weight is computed in the
    graph, and a float weight feeds both its layer's ``linear`` and the input gradient's ``mm``
    (XNNPACK's fully connected with transposed weights), so the program stores each weight
    once. ``aten.linear`` is kept whole (see :func:`transpose_free_matmuls`).
    """
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

    partitioner = XnnpackPartitioner(force_non_static_weights_for_f32_linear=True)
    config = EdgeCompileConfig(_check_ir_validity=False,
                               preserve_ops=[torch.ops.aten.linear.default])
    edge = to_edge_transform_and_lower(methods, partitioner=[partitioner], compile_config=config)
    return edge.to_executorch()


def save(program: ExecutorchProgramManager, out_file: Path) -> Path:
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with out_file.open("wb") as fh:
        program.write_to_file(fh)
    log.info("wrote %s (%.1f MB)", out_file, out_file.stat().st_size / 1e6)
    return out_file


def export_training_program(pm: PromptModel, *, quant: str, max_seq_len: int, batch_size: int,
                            out_file: Path) -> Path:
    """Export ``pm`` (with LoRA attached) as a training program with its classification and
    language-model methods; returns ``out_file``."""
    if max_seq_len < 2 or batch_size < 1:
        raise ValueError(f"max_seq_len={max_seq_len} and batch_size={batch_size} must be >= 2, 1")
    module = build_loss_module(pm, quant)
    names = lora_names(module)
    if not names:
        raise ModelError("the prompt model has no trainable tensors: attach LoRA first "
                         "(lpfl.model.adapters.set_mode(pm, 'lora', settings))")
    lora = lora_tensors(module, names)
    methods = {}
    for name, method, inputs in (
            (METHOD, module, example_inputs(pm, batch_size, max_seq_len)),
            (LM_METHOD, PromptLmLoss(module), lm_example_inputs(pm, batch_size, max_seq_len))):
        methods[name] = export_gradients(trace_gradients(method.eval(), names, inputs),
                                         lora + inputs)
    return save(lower(methods), out_file)
