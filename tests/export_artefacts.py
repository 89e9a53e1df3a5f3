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
from tests.conftest import write_run_file

MAX_SEQ_LEN = 48
PARITY_TEXTS = 200
SEVERAL_TOKEN_WORDS = (" terrible", " very good", " not good at all")
"""Label words of 1, 2 and 4 tokens for tiny-llama's word-level tokenizer."""


@functools.cache
def _root() -> Path:
    return Path(tempfile.mkdtemp(prefix="lpfl-export-tests-"))


@functools.cache
def exported(target: str, quant: str = "none",
             label_words: tuple[str, ...] = ()) -> tuple[Path, Manifest, Parity]:
    """Export tiny-llama for ``target``/``quant`` (parity measured on 200 MR sentences), with
    ``label_words`` instead of the default ones when given; the default fp32 XNNPACK artefact
    also holds the on-device training program (batch 8)."""
    out = _root() / f"{target}-{quant}{'-words' if label_words else ''}"
    training = (target, quant, label_words) == ("executorch-xnnpack", "none", ())
    model = "tiny-llama"
    if label_words:
        model = str(write_run_file(out.with_suffix(".toml"),
                                   prompt={"label_words": list(label_words)}))
    config = ExportConfig(model=model, target=target, quant=quant, out=out,
                          max_seq_len=MAX_SEQ_LEN, parity_texts=PARITY_TEXTS, training=training)
    manifest, parity = run_export(config)
    assert parity is not None
    return out, manifest, parity
