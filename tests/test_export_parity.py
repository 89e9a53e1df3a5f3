"""Exported tiny-llama programs against eager PyTorch, as ``lpfl export`` measures them.

Tolerance: fp32 programs (XNNPACK, ONNX Runtime) must match eager label-word logits within
``FP32_TOLERANCE`` (1e-3; seen ~1e-6 here) and agree on >= 99 % of 200 MR decisions, with the
exported adapter and with a random adapter fed as new inputs. Quantized programs are measured.
"""

from __future__ import annotations

import pytest

from lpfl.export.parity import FP32_AGREEMENT, FP32_TOLERANCE
from tests.export_artefacts import PARITY_TEXTS, exported


@pytest.mark.parametrize("target", ["executorch-xnnpack", "onnx"])
def test_fp32_program_matches_eager(target: str) -> None:
    folder, manifest, parity = exported(target)
    assert parity.texts == PARITY_TEXTS
    assert parity.max_abs_diff <= FP32_TOLERANCE
    assert parity.random_adapter_max_abs_diff <= FP32_TOLERANCE
    assert parity.agreement >= FP32_AGREEMENT
    assert manifest.parity["agreement"] == parity.agreement
    entry = manifest.program("score")
    assert entry.bytes == (folder / entry.file).stat().st_size
    assert entry.runtime == ("onnxruntime" if target == "onnx" else "executorch")


@pytest.mark.parametrize(("quant", "share"), [("int8", 0.9), ("8da4w", 0.5)])
def test_quantized_onnx_programs_are_smaller_and_keep_the_decisions(quant: str,
                                                                    share: float) -> None:
    """int8 stores the weight MatMuls in 8 bits (the tiny model's embedding, most of its file,
    stays float); 8da4w stores MatMuls and the embedding in 4 bits."""
    _, fp32, _ = exported("onnx")
    _, quantized, parity = exported("onnx", quant)
    assert quantized.program("score").bytes < share * fp32.program("score").bytes
    assert quantized.program("score").quant == quant
    assert parity.agreement >= 0.95
    assert parity.random_adapter_max_abs_diff < 0.1


@pytest.mark.slow
def test_portable_program_matches_eager() -> None:
    _, manifest, parity = exported("executorch-portable")
    assert parity.max_abs_diff <= FP32_TOLERANCE
    assert parity.agreement >= FP32_AGREEMENT
    assert manifest.program("score").file.endswith(".pte")


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["int8", "8da4w"])
def test_quantized_executorch_program_is_smaller_and_measured(quant: str) -> None:
    _, fp32, _ = exported("executorch-xnnpack")
    _, manifest, parity = exported("executorch-xnnpack", quant)
    assert manifest.program("score").bytes < 0.6 * fp32.program("score").bytes
    assert parity.random_adapter_max_abs_diff < 0.1
    assert 0.0 <= parity.agreement <= 1.0
