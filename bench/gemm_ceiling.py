"""Kernel ceiling for the edge runtimes' throughput goal: one linear layer of SmolLM2's shapes,
PyTorch fp32 against the XNNPACK kernels the quantized ExecuTorch programs use, at one thread.

Usage::

    python bench/gemm_ceiling.py --rows 32,256,512 --out bench/results/gemm_ceiling

A prompt model's soft-labelling time is almost all linear layers, so if a quantized kernel is not
2× PyTorch's fp32 GEMM on a shape, no program built on it can be 2× eager on the model. For each
shape (rows = batch × prompt tokens, in → out features) it lowers ``nn.Linear`` alone, fp32 and
with torchao's int8-dynamic-activation configs (int8 weights per channel, int4 weights in groups
of 32, as ``lpfl export`` does), to an XNNPACK program, and times it against ``F.linear`` in this
process, round-robin, median of ``--repeats``. ``results.json`` and ``report.md`` land in ``--out``.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger("bench.gemm_ceiling")

SHAPES = ((576, 576), (576, 192), (576, 1536), (1536, 576))
"""SmolLM2-135M's linear layers (in, out): q/o, k/v, gate/up, down."""
SCHEMES = ("fp32", "int8", "8da4w")


def xnnpack_linear(weight: torch.Tensor, rows: int, scheme: str) -> Any:
    """An ExecuTorch XNNPACK method running ``x @ weight.T`` for ``x`` of ``rows`` rows."""
    import executorch.kernels.quantized  # noqa: F401
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.extension.pybindings.portable_lib import _load_for_executorch_from_buffer

    from lpfl.export.stages import _linear_config

    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    layer.weight.data.copy_(weight)
    module = nn.Sequential(layer).eval()
    if scheme != "fp32":
        from torchao.quantization import quantize_

        quantize_(module, _linear_config(scheme, 32))
    example = (torch.randn(rows, weight.shape[1]),)
    with torch.no_grad():
        program = torch.export.export(module, example, strict=False)
    lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    buffer = lowered.to_executorch().buffer
    return _load_for_executorch_from_buffer(buffer), buffer


def time_shape(rows: int, k: int, n: int, generator: torch.Generator, repeats: int,
               inner: int) -> dict[str, Any]:
    """Median seconds per call of each kernel on ``rows × k → n``; speed-ups and GFLOP/s."""
    weight = torch.randn(n, k, generator=generator) / k**0.5
    x = torch.randn(rows, k, generator=generator)
    # The loaded modules read their program buffers in place: keep (module, buffer) pairs alive.
    methods = {s: xnnpack_linear(weight, rows, s) for s in SCHEMES}
    work: dict[str, Callable[[], object]] = {
        "torch fp32": lambda: nn.functional.linear(x, weight)}
    for scheme, (module, _buffer) in methods.items():
        work[f"xnnpack {scheme}"] = functools.partial(module.forward, [x])
    times: dict[str, list[float]] = {name: [] for name in work}
    for fn in work.values():
        fn()  # warm up (XNNPACK packs weights on first run)
    for _ in range(repeats):
        for name, fn in work.items():
            started = time.perf_counter()
            for _ in range(inner):
                fn()
            times[name].append((time.perf_counter() - started) / inner)
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    base = medians["torch fp32"]
    return {"rows": rows, "in": k, "out": n,
            "gflops": {name: 2 * rows * k * n / t / 1e9 for name, t in medians.items()},
            "speedup": {name: base / t for name, t in medians.items()}}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

    from lpfl.trainer_api import cpu_features

    torch.set_num_threads(1)
    _unsafe_reset_threadpool(1)
    generator = torch.Generator().manual_seed(0)
    results = []
    for rows in (int(r) for r in args.rows.split(",")):
        for k, n in SHAPES:
            row = time_shape(rows, k, n, generator, args.repeats, args.inner)
            log.info("%d x %d -> %d: %s", rows, k, n,
                     ", ".join(f"{name} {s:.2f}x" for name, s in row["speedup"].items()))
            results.append(row)
    return {"machine": platform.machine(), "processor": platform.processor(),
            "cpu_features": cpu_features(),
            "threads": 1, "torch": torch.__version__, "repeats": args.repeats,
            "inner": args.inner, "results": results}


def report(document: dict[str, Any]) -> str:
    names = list(document["results"][0]["speedup"])
    lines = ["# Kernel ceiling: one linear layer, PyTorch fp32 vs XNNPACK (one thread)", "",
             f"{document['machine']}, torch {document['torch']}; speed-up over `F.linear` fp32, "
             f"median of {document['repeats']} round-robin repeats of {document['inner']} calls "
             "(GFLOP/s in brackets).", "",
             "| rows × in → out | " + " | ".join(names) + " |",
             "|---|" + "---|" * len(names)]
    for r in document["results"]:
        cells = [f"{r['speedup'][n]:.2f}× ({r['gflops'][n]:.0f})" for n in names]
        lines.append(f"| {r['rows']} × {r['in']} → {r['out']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="256,512",
                        help="comma-separated row counts (batch × prompt tokens)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--inner", type=int, default=20, help="calls per timed repeat")
    parser.add_argument("--out", type=Path, default=Path("bench/results/gemm_ceiling"))
    args = parser.parse_args()
    document = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(document, indent=2) + "\n")
    (args.out / "report.md").write_text(report(document))
    print(report(document))


if __name__ == "__main__":
    main()
