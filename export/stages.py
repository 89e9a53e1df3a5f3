"""The export stages, each a function that can be run and tested alone.

``load`` → ``prepare_lora`` → ``quantize`` → ``export_static`` (or ``export_program`` for
ONNX) → ``lower`` → ``serialize``. The libraries do the work: torch.export, torchao (int8 /
8da4w linears, int8 embeddings), executorch's ``to_edge_transform_and_lower`` with the XNNPACK
partitioner. LoRA tensors stay float32 in every scheme (the quantizer skips the LoRA matrices):
graph inputs for ONNX, external constants for ExecuTorch (:mod:`lpfl.export.constant_lora`).
int8 uses torchao rather than PT2E's XNNPACKQuantizer, which failed on the LoRA-as-inputs graph
("found dependency cycles"). ONNX has its own two stages in :mod:`lpfl.export.onnx_export`.
"""

from __future__ import annotations

import logging
import time
from copy import deepcopy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lpfl.artefact import DATA_FILE, LORA_TAG, method_name
from lpfl.config import LoraSettings, RunConfig
from lpfl.errors import ArtefactError
from lpfl.export.constant_lora import (
    STATIC_VIEWS,
    external_lora_tag,
    static_example,
    tag_lora_constants,
)
from lpfl.export.scoring_graph import EXAMPLE_TEXTS, ScoringGraph
from lpfl.model.adapters import attach_lora
from lpfl.model.loading import load_base_model
from lpfl.model.prompt import PromptModel

if TYPE_CHECKING:
    from executorch.exir import ExecutorchProgramManager

log = logging.getLogger(__name__)

PROGRAM_FILE = "score.pte"


def load(run: RunConfig) -> PromptModel:
    """The prompt model of ``run`` (base model, tokenizer, pattern, verbalizer), no LoRA yet."""
    started = time.perf_counter()
    pm = PromptModel(load_base_model(run.model), run.prompt, run.model.max_length)
    pm.network.eval()
    log.info("loaded %s in %.1f s", pm.base.model_id, time.perf_counter() - started)
    return pm


def prepare_lora(pm: PromptModel, settings: LoraSettings, seed: int = 0) -> ScoringGraph:
    """Attach LoRA (as the clients do: seeded, B = 0) and wrap the scorer with LoRA as inputs."""
    torch.manual_seed(seed)
    attach_lora(pm, settings)
    pm.network.eval()
    return ScoringGraph(pm).eval()


def _quantize_embeddings(module: nn.Module) -> None:
    """int8 weight-only embeddings (per row): the table is a fifth of a small LM's weights.

    ``padding_idx`` only shapes gradients; it is cleared so that ExecuTorch's quant fusion
    recognises ``embedding(dequantize(table), ids)`` and uses its int8 embedding kernel."""
    from torchao.quantization import IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerAxis

    for embedding in module.modules():
        if isinstance(embedding, nn.Embedding):
            embedding.padding_idx = None
    quantize_(module, IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0)),
              filter_fn=lambda m, _fqn: isinstance(m, nn.Embedding))


def _is_base_linear(module: nn.Module, fqn: str) -> bool:
    """A base model linear layer (the LoRA matrices are linear layers too, and stay fp32)."""
    return isinstance(module, nn.Linear) and ".lora_" not in f".{fqn}"


def _linear_config(quant: str, group_size: int) -> Any:
    """torchao's int8-dynamic-activation config: int4 weights in groups (8da4w) or int8
    weights per output channel (int8)."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig
    from torchao.quantization.granularity import PerAxis, PerGroup

    if quant == "8da4w":
        int4: torch.dtype = torch.int4  # type: ignore[attr-defined]
        return Int8DynamicActivationIntxWeightConfig(weight_dtype=int4,
                                                     weight_granularity=PerGroup(group_size))
    return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8,
                                                 weight_granularity=PerAxis(0))


def quantize(graph: nn.Module, quant: str, group_size: int = 32) -> nn.Module:
    """The module to export for ``quant``: ``none`` as is; ``8da4w`` and ``int8`` through
    torchao (int8 dynamic activations; int4 weights in groups of ``group_size``, or int8
    weights per channel), which XNNPACK runs; embeddings become int8 for both. The LoRA
    matrices stay fp32. ``graph`` is left untouched (its modules are the eager prompt
    model's): a quantized copy is returned."""
    if quant == "none":
        return graph
    from torchao.quantization import quantize_

    started = time.perf_counter()
    copy = deepcopy(graph)
    quantize_(copy, _linear_config(quant, group_size), filter_fn=_is_base_linear)
    _quantize_embeddings(copy)
    log.info("quantized (%s) in %.1f s", quant, time.perf_counter() - started)
    return copy


def export_program(module: nn.Module, example: tuple[torch.Tensor, ...],
                   shapes: tuple[Any, ...],
                   runtime_asserts: bool = False) -> torch.export.ExportedProgram:
    """``torch.export`` the scorer with dynamic batch and sequence length.

    ``runtime_asserts`` turns shape guards into asserts in the graph: needed for label words of
    several tokens, whose rows of ``seq + L - 1`` tokens give torch's shape solver a contiguity
    guard it cannot prove (it holds for every length)."""
    started = time.perf_counter()
    with torch.no_grad():
        program = torch.export.export(module, example, dynamic_shapes=shapes, strict=False,
                                      prefer_deferred_runtime_asserts_over_guards=runtime_asserts)
    log.info("torch.export in %.1f s", time.perf_counter() - started)
    return program


def export_static(module: nn.Module, pm: PromptModel, batch: int,
                  seq_buckets: tuple[int, ...]) -> dict[str, torch.export.ExportedProgram]:
    """``torch.export`` the constant-LoRA scorer once per sequence bucket (static shapes), with
    :data:`~lpfl.export.constant_lora.STATIC_VIEWS` applied and the LoRA constants tagged for
    the external data file; keyed by method name."""
    programs = {}
    for seq_len in seq_buckets:
        started = time.perf_counter()
        example = static_example(pm, list(EXAMPLE_TEXTS), batch, seq_len)
        with torch.no_grad():
            program = torch.export.export(module, example, strict=False)
        program = program.run_decompositions(dict(STATIC_VIEWS))
        tagged = tag_lora_constants(program)
        log.info("torch.export %dx%d in %.1f s (%d LoRA constants tagged)", batch, seq_len,
                 time.perf_counter() - started, tagged)
        programs[method_name(seq_len)] = program
    return programs


def lower(programs: dict[str, torch.export.ExportedProgram],
          target: str) -> ExecutorchProgramManager:
    """Lower the methods to one ExecuTorch program: XNNPACK-delegated or portable kernels only.
    Constants tagged by :func:`~lpfl.export.constant_lora.tag_lora_constants` go to the external
    data file; the methods share every other constant (stored once).

    ExecuTorch's quant fusion turns torchao's dequantize + embedding into its
    ``quantized_decomposed::embedding_byte`` kernel (from ``executorch.kernels.quantized``).
    """
    import executorch.kernels.quantized  # noqa: F401  (registers the quantized ops)
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower

    started = time.perf_counter()
    partitioner = []
    if target == "executorch-xnnpack":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        partitioner = [XnnpackPartitioner()]
    edge = to_edge_transform_and_lower(programs, partitioner=partitioner)
    result = edge.to_executorch(ExecutorchBackendConfig(do_quant_fusion_and_const_prop=True,
                                                        external_constants=external_lora_tag))
    log.info("lowered %d method(s) for %s in %.1f s", len(programs), target,
             time.perf_counter() - started)
    return result


def serialize(program: ExecutorchProgramManager, out: Path) -> tuple[Path, Path]:
    """Write the program file and its LoRA data file into ``out``; returns both paths."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / PROGRAM_FILE
    with path.open("wb") as fh:
        program.write_to_file(fh)
    data = {name.removesuffix(".ptd"): bytes(cord)
            for name, cord in (program._tensor_data or {}).items()}
    if set(data) != {LORA_TAG}:
        raise ArtefactError(f"the program's external data is {sorted(data)}, expected only "
                            f"{LORA_TAG!r}: the LoRA tagging does not fit this ExecuTorch")
    data_path = out / DATA_FILE
    data_path.write_bytes(data[LORA_TAG])
    log.info("wrote %s (%.1f MB) and %s (%.2f MB)", path, path.stat().st_size / 1e6, data_path,
             data_path.stat().st_size / 1e6)
    return path, data_path
