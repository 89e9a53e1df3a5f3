"""Tiny-llama artefacts exported once per test process and shared by the export test files.

Lowering even a two-layer model takes tens of seconds, so each (target, quant) pair is built
once, on first use, into a temporary folder that lives as long as the process.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

from lpfl.artefact import Manifest
from lpfl.export.config import ExportConfig
from lpfl.export.parity import Parity
from lpfl.export.pipeline import run_export

MAX_SEQ_LEN = 48
PARITY_TEXTS = 200


@functools.cache
def _root() -> Path:
    return Path(tempfile.mkdtemp(prefix="lpfl-export-tests-"))


@functools.cache
def exported(target: str, quant: str = "none") -> tuple[Path, Manifest, Parity]:
    """Export tiny-llama for ``target``/``quant`` (parity measured on 200 MR sentences); the
    fp32 XNNPACK artefact also holds the on-device training program (batch 8)."""
    out = _root() / f"{target}-{quant}"
    training = (target, quant) == ("executorch-xnnpack", "none")
    config = ExportConfig(model="tiny-llama", target=target, quant=quant, out=out,
                          max_seq_len=MAX_SEQ_LEN, parity_texts=PARITY_TEXTS, training=training)
    manifest, parity = run_export(config)
    assert parity is not None
    return out, manifest, parity
