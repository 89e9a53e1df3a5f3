"""``ExportConfig``: what ``lpfl export`` builds, validated before any model is loaded."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from lpfl.config import ModelSettings, RunConfig, load_config
from lpfl.errors import ConfigError

TARGETS = ("executorch-xnnpack", "executorch-portable", "onnx")
QUANTS = ("none", "int8", "8da4w")
GROUP_SIZES = (32, 64, 128)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def runtime_of(target: str) -> str:
    """The runtime that runs programs built for ``target``."""
    return "onnxruntime" if target == "onnx" else "executorch"


@dataclass(frozen=True)
class ExportConfig:
    """One export: which model, for which runtime, how quantized, how long, written where.

    ``model`` is ``smollm2`` (the packaged default), a run config (``.toml``; its model, prompt
    and LoRA settings are used) or a model source (a local model folder, a ``.gguf`` file,
    ``tiny-llama``). ``max_seq_len`` 0 means the run config's ``model.max_length``.
    ``group_size`` is the weight block of the quantized schemes (int4 groups of XNNPACK 8da4w,
    ``MatMulNBits`` blocks of ONNX int8 / 8da4w). ``training`` also exports the on-device
    training program, for a batch of ``train_batch_size``.
    """

    model: str
    target: str
    out: Path
    quant: str = "none"
    max_seq_len: int = 0
    group_size: int = 32
    batch: int = 8
    """Batch of the ExecuTorch score program (its shapes are static, see
    :mod:`lpfl.export.constant_lora`); ONNX programs take any batch up to 64."""
    seq_buckets: tuple[int, ...] = ()
    """Prompt lengths of the ExecuTorch score methods, besides the maximum length (always one):
    a batch runs in the shortest that holds it."""
    training: bool = False
    train_batch_size: int = 8
    parity_texts: int = 200
    """How many MR sentences the export's decision-agreement check scores (0: skip it)."""

    def __post_init__(self) -> None:
        _require(bool(self.model), "--model is empty: use smollm2, a run config or a model path")
        _require(self.target in TARGETS,
                 f"--target {self.target!r}: use one of {', '.join(TARGETS)}")
        _require(self.quant in QUANTS, f"--quant {self.quant!r}: use one of {', '.join(QUANTS)}")
        _require(not (self.target == "executorch-portable" and self.quant != "none"),
                 f"--quant {self.quant} needs the XNNPACK delegate's quantized kernels: use "
                 "--target executorch-xnnpack, or --quant none for executorch-portable")
        _require(self.max_seq_len == 0 or 8 <= self.max_seq_len <= 4096,
                 f"--max-seq-len {self.max_seq_len} must be between 8 and 4096 (0: the run "
                 "config's model.max_length)")
        _require(self.group_size in GROUP_SIZES,
                 f"--group-size {self.group_size}: use one of {GROUP_SIZES}")
        _require(1 <= self.batch <= 64, f"--batch {self.batch} must be between 1 and 64")
        _require(all(8 <= n <= 4096 for n in self.seq_buckets),
                 f"--seq-buckets {list(self.seq_buckets)}: each must be between 8 and 4096")
        _require(self.train_batch_size >= 1,
                 f"--train-batch-size {self.train_batch_size} must be >= 1")
        _require(self.parity_texts >= 0, f"--parity-texts {self.parity_texts} must be >= 0")
        _require(not (self.training and self.target == "onnx"),
                 "--training builds an ExecuTorch training program: use an executorch target")

    @property
    def runtime(self) -> str:
        return runtime_of(self.target)

    def buckets(self, max_seq_len: int) -> tuple[int, ...]:
        """The sequence lengths to export: ``seq_buckets`` plus ``max_seq_len``, ascending; a
        ConfigError if a bucket exceeds the maximum."""
        _require(all(n <= max_seq_len for n in self.seq_buckets),
                 f"--seq-buckets {list(self.seq_buckets)} exceed the maximum prompt length "
                 f"{max_seq_len} (--max-seq-len)")
        return tuple(sorted({*self.seq_buckets, max_seq_len}))

    def run_config(self) -> RunConfig:
        """The run settings to export: from a ``.toml`` file, or defaults with ``model`` as the
        model source; ``model.max_length`` becomes ``max_seq_len`` when that is given."""
        if self.model.endswith(".toml"):
            config = load_config(Path(self.model))
        else:
            config = RunConfig(model=ModelSettings(source=self.model))
        if self.max_seq_len:
            model = dataclasses.replace(config.model, max_length=self.max_seq_len)
            config = dataclasses.replace(config, model=model)
        return config
