"""``lpfl export``: build a device artefact (score program, tokenizer, manifest) and report it.

Example::

    lpfl export --model smollm2 --target executorch-xnnpack --quant 8da4w --out runs/pte-8da4w
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lpfl.errors import ConfigError
from lpfl.export.config import QUANTS, TARGETS, ExportConfig


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``export`` to the ``lpfl`` subcommands; it runs :func:`run`."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "export", help="export the prompt model's scorer for ExecuTorch or ONNX Runtime")
    parser.add_argument("--model", default="smollm2",
                        help="smollm2, a run config (.toml), a model folder, .gguf or tiny-llama")
    parser.add_argument("--target", required=True, choices=TARGETS, help="runtime and backend")
    parser.add_argument("--quant", default="none", choices=QUANTS,
                        help="weight quantization of the program")
    parser.add_argument("--max-seq-len", type=int, default=0,
                        help="longest prompt in tokens (0: the run config's model.max_length)")
    parser.add_argument("--batch", type=int, default=8,
                        help="batch of the ExecuTorch score program (static shapes)")
    parser.add_argument("--seq-buckets", default="",
                        help="comma-separated prompt lengths of the ExecuTorch score methods "
                             "(the max length is always one; e.g. 32,48)")
    parser.add_argument("--group-size", type=int, default=32,
                        help="weight block of the quantized schemes")
    parser.add_argument("--training", action="store_true",
                        help="also export the on-device LoRA training program (ExecuTorch)")
    parser.add_argument("--train-batch-size", type=int, default=8,
                        help="batch size of the training program")
    parser.add_argument("--parity-texts", type=int, default=200,
                        help="MR sentences for the parity check against eager (0: skip)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for eager and program during the parity check")
    parser.add_argument("--out", type=Path, required=True, help="artefact folder to write")
    parser.set_defaults(func=run)
    return parser


def parse_buckets(text: str) -> tuple[int, ...]:
    """``"32,48"`` -> ``(32, 48)``; a ConfigError names a part that is not a number."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in parts if not p.isdigit()]
    if bad:
        raise ConfigError(f"--seq-buckets {text!r}: {bad[0]!r} is not a whole number")
    return tuple(int(p) for p in parts)


def run(args: argparse.Namespace) -> int:
    import torch

    from lpfl.export.pipeline import run_export

    torch.set_num_threads(max(1, args.threads))
    config = ExportConfig(model=args.model, target=args.target, quant=args.quant,
                          max_seq_len=args.max_seq_len, group_size=args.group_size,
                          batch=args.batch, seq_buckets=parse_buckets(args.seq_buckets),
                          training=args.training, train_batch_size=args.train_batch_size,
                          parity_texts=args.parity_texts, out=args.out)
    manifest, parity = run_export(config)
    for entry in manifest.programs:
        print(f"{entry.role}: {config.out / entry.file} ({entry.bytes / 1e6:.1f} MB, "
              f"{entry.runtime} {entry.runtime_version}, quant {entry.quant})")
    if parity is not None:
        p = parity
        print(f"parity vs eager on {p.texts} MR sentences: max |Δ logit| {p.max_abs_diff:.2e} "
              f"(random adapter {p.random_adapter_max_abs_diff:.2e}), decision agreement "
              f"{100 * p.agreement:.1f}%, {p.speedup:.2f}x eager speed "
              f"({p.program_s:.2f} s vs {p.eager_s:.2f} s)")
    print(f"wrote {config.out / 'manifest.json'}")
    return 0
