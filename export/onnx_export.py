"""ONNX stages: ``torch.onnx.export`` the exported scorer, then ``quantize_dynamic`` for int8.

The LoRA tensors are named graph inputs (their PEFT state-dict names), so a client feeds each
round's adapter to the same session. ``quantize_dynamic`` turns the weight MatMuls and the
embedding Gather into int8; it quantizes only MatMuls with a constant B by default
(``MatMulConstBOnly``), so the LoRA matmuls stay float32. ``quant_pre_process`` is skipped:
it fails on dynamic shapes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from lpfl.export.scoring_graph import TOKEN_INPUTS

log = logging.getLogger(__name__)

FP32_FILE = "score.fp32.onnx"
PROGRAM_FILE = "score.onnx"


def export_onnx(program: torch.export.ExportedProgram, lora_names: Sequence[str],
                out: Path) -> Path:
    """Translate the exported scorer (:func:`lpfl.export.stages.export_program`) to one fp32
    ONNX file in ``out`` (weights inside) and return its path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / FP32_FILE
    started = time.perf_counter()
    torch.onnx.export(program, (), str(path), dynamo=True, external_data=False,
                      input_names=[*TOKEN_INPUTS, *lora_names], output_names=["class_logits"])
    log.info("torch.onnx.export in %.1f s: %s (%.1f MB)", time.perf_counter() - started, path,
             path.stat().st_size / 1e6)
    return path


def quantize_onnx(fp32: Path, quant: str) -> Path:
    """The shipped ONNX program: ``fp32`` renamed for ``none``, dynamic int8 for ``int8``."""
    path = fp32.with_name(PROGRAM_FILE)
    if quant == "none":
        return fp32.replace(path)
    from onnxruntime.quantization import QuantType, quantize_dynamic

    started = time.perf_counter()
    quantize_dynamic(fp32, path, weight_type=QuantType.QInt8, per_channel=True)
    fp32.unlink()
    log.info("quantize_dynamic in %.1f s: %s (%.1f MB)", time.perf_counter() - started, path,
             path.stat().st_size / 1e6)
    return path
