"""The real SmolLM2-135M exported for XNNPACK with int8 weights: parity, size, speed.

Slow (the export lowers 30 layers): run with ``pytest -m slow tests/test_export_smollm2.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lpfl.export.config import ExportConfig
from lpfl.export.parity import QUANT_AGREEMENT_GOAL
from lpfl.export.pipeline import run_export

SMOLLM2_FP32_BYTES = 134_515_008 * 4
"""The fp32 base model (LlamaForCausalLM, 134,515,008 parameters)."""


@pytest.mark.slow
@pytest.mark.smollm2
def test_int8_smollm2_program_agrees_with_eager_and_is_small(tmp_path: Path) -> None:
    config = ExportConfig(model="smollm2", target="executorch-xnnpack", quant="int8",
                          out=tmp_path, parity_texts=200)
    manifest, parity = run_export(config)
    assert parity is not None and parity.texts == 200
    assert parity.agreement >= QUANT_AGREEMENT_GOAL
    assert manifest.program("score").bytes <= 0.30 * SMOLLM2_FP32_BYTES
    assert manifest.model_id == "smollm2-135m-instruct-q4_1"
    assert sum(a * b for a, b in manifest.lora_shapes.values()) == 460_800
