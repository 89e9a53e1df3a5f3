"""ONNX stages: ``torch.onnx.export`` the exported scorer, then block-wise weight quantization.

The LoRA tensors are named graph inputs (their PEFT state-dict names), so a client feeds each
round's adapter to the same session. :func:`quantize_onnx` turns the weight MatMuls (and for
``8da4w`` the embedding Gather) into ONNX Runtime's ``MatMulNBits`` / ``GatherBlockQuantized``;
only MatMuls with a constant weight are touched, so the LoRA matmuls stay float32.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from lpfl.artefact import TOKEN_INPUTS

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


def quantize_onnx(fp32: Path, quant: str, group_size: int = 32) -> Path:
    """The shipped ONNX program: ``fp32`` renamed for ``none``; otherwise the weight MatMuls
    become ``MatMulNBits`` with symmetric block-wise weights (``group_size`` per block) and int8
    activations at compute time (``accuracy_level=4``): 8-bit weights for ``int8``, 4-bit for
    ``8da4w``, where the embedding ``Gather`` is stored in 4 bits too (ONNX Runtime quantizes
    Gather in 4 bits only).

    ``quantize_dynamic`` was tried first: per channel its MatMul scales ended up on the wrong axis
    (0 % decision agreement on SmolLM2), per tensor it kept 85 %. Block-wise weights keep
    SmolLM2's decisions (see docs/results.md). The LoRA MatMuls have no constant weight, so they
    stay float32.
    """
    path = fp32.with_name(PROGRAM_FILE)
    if quant == "none":
        return fp32.replace(path)
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    started = time.perf_counter()
    bits, ops = (8, ("MatMul",)) if quant == "int8" else (4, ("MatMul", "Gather"))
    quantizer = MatMulNBitsQuantizer(onnx.load(str(fp32)), bits=bits, block_size=group_size,
                                     is_symmetric=True, accuracy_level=4,
                                     op_types_to_quantize=ops)
    quantizer.process()
    quantizer.model.save_model_to_file(str(path), use_external_data_format=False)
    fp32.unlink()
    log.info("MatMulNBits (%d-bit, blocks of %d) in %.1f s: %s (%.1f MB)", bits, group_size,
             time.perf_counter() - started, path, path.stat().st_size / 1e6)
    return path
