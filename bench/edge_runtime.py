"""Edge-runtime benchmark: every backend × quantization, as ratios
against eager fp32, on one machine with one thread.

Usage::

    python bench/edge_runtime.py --model smollm2 --out bench/results/edge_runtime
    python bench/edge_runtime.py --model tiny-llama --texts 40 --repeats 1 --out /tmp/er

Per case (``eager:none``, ``executorch-xnnpack:none|int8|8da4w``, ``executorch-portable:none``,
``onnx:none|int8``) it records:

- the score program's file size (the base model a device downloads once) and, for the ExecuTorch
  cases that have one, the training program's size;
- load time and peak resident memory, each case in a fresh child process (``rss`` subcommand) so
  one backend's memory is not another's: load, score a batch, and train two steps;
- soft-labelling throughput (sentences/s on MR test sentences) and its decision agreement with
  eager fp32;
- the LoRA training step time (eager AdamW vs the ExecuTorch training program, same batches).

Timings are taken in this one process with ``torch.set_num_threads(1)``, round-robin over the
cases and repeated (the median is kept), so a background load slows every case alike and the
ratios stay meaningful. Artefacts are exported once into ``--artefacts`` (outside the results:
they are hundreds of MB) and reused.
``results.json`` and ``report.md`` (the table in ``docs/results.md``) land in ``--out``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger("bench.edge_runtime")

CASES = ("eager:none", "executorch-xnnpack:none", "executorch-xnnpack:int8",
         "executorch-xnnpack:8da4w", "executorch-portable:none", "onnx:none", "onnx:int8")
TRAINED_QUANTS = ("none", "int8")
"""XNNPACK cases whose artefact also gets a training program (its base stored the same way)."""
TRAIN_TARGET = "executorch-xnnpack"
VERSIONED = ("torch", "transformers", "executorch", "torchao", "onnxruntime", "lpfl")


@dataclass(frozen=True)
class Case:
    """One backend × quantization."""

    target: str
    quant: str

    @classmethod
    def parse(cls, text: str) -> Case:
        target, _, quant = text.partition(":")
        return cls(target, quant or "none")

    @property
    def name(self) -> str:
        return f"{self.target}:{self.quant}"

    @property
    def runtime(self) -> str:
        from lpfl.export.config import runtime_of

        return "eager" if self.target == "eager" else runtime_of(self.target)

    @property
    def trains_on_program(self) -> bool:
        return self.target == TRAIN_TARGET and self.quant in TRAINED_QUANTS


@dataclass
class CaseResult:
    """What was measured for one case (``None``: not applicable)."""

    case: str
    score_file_bytes: int | None = None
    train_file_bytes: int | None = None
    load_seconds: float | None = None
    peak_rss_bytes: int | None = None
    sentences_per_s: float | None = None
    agreement: float | None = None
    train_step_seconds: float | None = None
    swap_seconds: float | None = None
    """A new adapter into the scorer plus the first batch under it (an ExecuTorch program is
    reloaded with a rewritten data file, and XNNPACK packs its weights again)."""


def _run_config(model: str, max_seq_len: int) -> Any:
    from lpfl.export.config import ExportConfig

    return ExportConfig(model=model, target="onnx", out=Path("."),
                        max_seq_len=max_seq_len).run_config()


def artefact_dir(root: Path, case: Case) -> Path:
    return root / f"{case.target}-{case.quant}"


def export_case(model: str, case: Case, max_seq_len: int, batch: int, buckets: tuple[int, ...],
                root: Path) -> Path:
    """Export ``case`` into a folder of ``root`` unless a finished export is already there
    (ExecuTorch score methods of ``batch`` rows for the sequence ``buckets``; training batch
    ``batch``)."""
    from lpfl.artefact import MANIFEST_FILE
    from lpfl.export.config import ExportConfig
    from lpfl.export.pipeline import run_export

    out = artefact_dir(root, case)
    if (out / MANIFEST_FILE).is_file():
        log.info("reusing %s", out)
        return out
    started = time.perf_counter()
    run_export(ExportConfig(model=model, target=case.target, quant=case.quant, out=out,
                            max_seq_len=max_seq_len, training=case.trains_on_program,
                            batch=batch, seq_buckets=buckets, train_batch_size=batch,
                            parity_texts=0))
    log.info("exported %s in %.0f s", case.name, time.perf_counter() - started)
    return out


def mr_texts(n: int) -> list[str]:
    from lpfl.export.parity import parity_texts

    return parity_texts(n)


def train_examples(n: int) -> list[Any]:
    from lpfl.data import load_corpus
    from lpfl.training import hard_example

    return [hard_example(e.text, e.label, 2) for e in load_corpus("mr")[:n]]


class EagerFactory:
    """Builds fresh eager prompt models with LoRA (and remembers the run config)."""

    def __init__(self, model: str, max_seq_len: int) -> None:
        self.run = _run_config(model, max_seq_len)

    def __call__(self) -> Any:
        from lpfl.simulate import fresh_prompt_model

        return fresh_prompt_model(self.run, "lora", seed=0)


class Backend:
    """A case opened in this process: its scorer and, if it has one, its trainer."""

    def __init__(self, case: Case, root: Path, eager: EagerFactory) -> None:
        from lpfl.backends import program_runtime
        from lpfl.model.loading import model_id_of
        from lpfl.runtime import ClientRuntime

        self.case = case
        if case.runtime == "eager":
            self.runtime = ClientRuntime.eager(eager())
        else:
            self.runtime = program_runtime(case.runtime, artefact_dir(root, case),
                                           model_id_of(eager.run.model), eager,
                                           eager_training=not case.trains_on_program)

    def score(self, texts: Sequence[str], batch: int) -> torch.Tensor:
        return self.runtime.scorer.score(texts, batch)

    def train(self, examples: Sequence[Any], steps: int, batch: int) -> None:
        from lpfl.training import batch_plan

        plan = batch_plan(examples, steps, batch, 0.0, np.random.default_rng(0))
        self.runtime.trainer.train(examples, plan, 1e-4, 0.0)


def measure_rss(case: Case, root: Path, model: str, max_seq_len: int, batch: int) -> dict[str, Any]:
    """In this (fresh) process: load the case, score one batch, train two steps; report the
    load time and the process's peak resident memory."""
    from lpfl.trainer_api import peak_rss_bytes

    torch.set_num_threads(1)
    started = time.perf_counter()
    backend = Backend(case, root, EagerFactory(model, max_seq_len))
    load_seconds = time.perf_counter() - started
    backend.score(mr_texts(batch), batch)
    backend.train(train_examples(batch), 2, batch)
    return {"load_seconds": load_seconds, "peak_rss_bytes": peak_rss_bytes()}


def rss_in_child(case: Case, args: argparse.Namespace) -> dict[str, Any]:
    """:func:`measure_rss` in a child process (this script's ``rss`` subcommand)."""
    cmd = [sys.executable, __file__, "rss", "--case", case.name, "--artefacts", str(args.artefacts),
           "--model", args.model, "--max-seq-len", str(args.max_seq_len),
           "--batch", str(args.batch)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"rss child for {case.name} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def round_robin(backends: Sequence[Backend], work: Callable[[Backend], object],
                repeats: int) -> dict[str, float]:
    """Median seconds of ``work`` per backend, interleaving backends within each repeat."""
    times: dict[str, list[float]] = {b.case.name: [] for b in backends}
    for repeat in range(repeats):
        for backend in backends:
            started = time.perf_counter()
            work(backend)
            times[backend.case.name].append(time.perf_counter() - started)
            log.info("repeat %d %s: %.2f s", repeat + 1, backend.case.name,
                     times[backend.case.name][-1])
    return {name: statistics.median(ts) for name, ts in times.items()}


def adapter_swap_seconds(backends: Sequence[Backend], factory: EagerFactory,
                         texts: Sequence[str], batch: int) -> dict[str, float]:
    """Per backend: seconds to take a new (random) adapter and score one batch with it."""
    from lpfl.export.parity import random_adapter

    state = random_adapter(factory())
    seconds = {}
    for backend in backends:
        started = time.perf_counter()
        backend.runtime.scorer.load_state(state)
        backend.score(texts, batch)
        seconds[backend.case.name] = time.perf_counter() - started
    return seconds


def _file_bytes(root: Path, case: Case, role: str) -> int | None:
    from lpfl.artefact import load_manifest

    if case.runtime == "eager":
        return None
    entries = [p for p in load_manifest(artefact_dir(root, case)).programs if p.role == role]
    return entries[0].bytes if entries else None


def run_benchmark(args: argparse.Namespace) -> list[CaseResult]:
    from lpfl.export.cli import parse_buckets

    torch.set_num_threads(1)
    cases = [Case.parse(c) for c in args.cases.split(",")]
    if cases[0].name != "eager:none":
        raise SystemExit("--cases must start with eager:none (the reference)")
    for case in cases[1:]:
        export_case(args.model, case, args.max_seq_len, args.batch,
                    parse_buckets(args.seq_buckets), args.artefacts)
    results = {c.name: CaseResult(c.name, _file_bytes(args.artefacts, c, "score"),
                                  _file_bytes(args.artefacts, c, "train")) for c in cases}
    for case in cases:
        results[case.name].__dict__.update(rss_in_child(case, args))
    factory = EagerFactory(args.model, args.max_seq_len)
    backends = [Backend(c, args.artefacts, factory) for c in cases]
    texts = mr_texts(args.texts)
    decisions = {b.case.name: b.score(texts, args.batch).argmax(-1) for b in backends}
    reference = decisions["eager:none"]
    score_s = round_robin(backends, lambda b: b.score(texts, args.batch), args.repeats)
    trainers = [b for b in backends if b.case.runtime == "eager" or b.case.trains_on_program]
    examples = train_examples(4 * args.batch)
    train_s = round_robin(trainers, lambda b: b.train(examples, args.train_steps, args.batch),
                          args.repeats)
    swap_s = adapter_swap_seconds(backends, factory, texts[: args.batch], args.batch)
    for name, result in results.items():
        result.swap_seconds = swap_s[name]
        result.sentences_per_s = len(texts) / score_s[name]
        result.agreement = float((decisions[name] == reference).float().mean())
        if name in train_s:
            result.train_step_seconds = train_s[name] / args.train_steps
    return list(results.values())


def environment(args: argparse.Namespace) -> dict[str, Any]:
    from lpfl.trainer_api import cpu_features

    versions = {}
    for package in VERSIONED:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = ""
    return {"machine": platform.machine(), "processor": platform.processor(),
            "cpu_features": cpu_features(),
            "python": platform.python_version(), "threads": 1, "versions": versions,
            "model": args.model, "max_seq_len": args.max_seq_len, "batch": args.batch,
            "seq_buckets": args.seq_buckets,
            "texts": args.texts, "repeats": args.repeats, "train_steps": args.train_steps}


def _ratio(value: float | None, reference: float | None) -> str:
    if value is None or not reference:
        return "–"
    return f"{value / reference:.2f}×"


def report(results: Sequence[CaseResult], env: dict[str, Any]) -> str:
    """The report's table: each case against eager fp32, plus the edge-runtime goals."""
    eager = results[0]
    fp32 = {r.case.split(":")[0]: r for r in results if r.case.endswith(":none")}

    def fp32_of(r: CaseResult) -> CaseResult | None:
        return fp32.get(r.case.split(":")[0]) or fp32.get("onnx")

    lines = [
        "# Edge-runtime benchmark",
        "",
        f"Model `{env['model']}`, prompts of at most {env['max_seq_len']} tokens, batch "
        f"{env['batch']}, {env['texts']} MR sentences, one thread, median of {env['repeats']} "
        f"round-robin repeats; {env['machine']} "
        f"({', '.join(env.get('cpu_features', [])) or 'no int8 dot-product features'}), "
        f"torch {env['versions']['torch']}, executorch "
        f"{env['versions']['executorch']}, onnxruntime {env['versions']['onnxruntime']}.",
        "Ratios are against eager fp32; file sizes against the same target's fp32 program "
        "(ONNX fp32 where that target's is not in the run). ExecuTorch programs have static "
        f"shapes: batch {env['batch']}, prompt lengths {env['seq_buckets']} and "
        f"{env['max_seq_len']}; every backend scores in batches of similar prompt length.",
        "",
        "| case | score file | size ratio | load s | peak RSS | sentences/s | throughput "
        "ratio | agreement | adapter swap s | train file | train step s | step ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.case} | {_mb(r.score_file_bytes)} "
            f"| {_ratio(r.score_file_bytes, _get(fp32_of(r), 'score_file_bytes'))} "
            f"| {_num(r.load_seconds)} | {_mb(r.peak_rss_bytes)} | {_num(r.sentences_per_s)} "
            f"| {_ratio(r.sentences_per_s, eager.sentences_per_s)} | {_pct(r.agreement)} "
            f"| {_num(r.swap_seconds)} | {_mb(r.train_file_bytes)} | {_num(r.train_step_seconds)} "
            f"| {_ratio(r.train_step_seconds, eager.train_step_seconds)} |")
    lines += ["", "## Goals", ""]
    for r in results:
        if r.case.split(":")[1] in ("int8", "8da4w") and r.sentences_per_s:
            fast = r.sentences_per_s >= 2 * (eager.sentences_per_s or float("inf"))
            agree = (r.agreement or 0) >= 0.97
            reference = _get(fp32_of(r), "score_file_bytes")
            small = bool(reference and r.score_file_bytes
                         and r.score_file_bytes <= 0.3 * reference)
            lines.append(f"- {r.case}: throughput ≥ 2× eager: {_yes(fast)}; agreement ≥ 97 %: "
                         f"{_yes(agree)}; file ≤ 30 % of fp32: {_yes(small)}")
        fp32_train = _get(fp32_of(r), "train_file_bytes")
        if r.train_file_bytes and not r.case.endswith(":none") and fp32_train:
            lines.append(f"- {r.case} training program ≤ 30 % of the fp32 one: "
                         f"{_yes(r.train_file_bytes <= 0.3 * fp32_train)}")
        if r.train_step_seconds and r.case != "eager:none" and eager.train_step_seconds:
            lines.append(f"- {r.case} training step ≤ 1.5× eager: "
                         f"{_yes(r.train_step_seconds <= 1.5 * eager.train_step_seconds)}")
    return "\n".join(lines) + "\n"


def _get(result: CaseResult | None, name: str) -> Any:
    return None if result is None else getattr(result, name)


def _mb(value: int | None) -> str:
    return "–" if value is None else f"{value / 1e6:.1f} MB"


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def _yes(ok: bool) -> str:
    return "met" if ok else "**not met**"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", default="bench", choices=("bench", "rss"))
    parser.add_argument("--model", default="smollm2", help="smollm2, tiny-llama, a run config…")
    parser.add_argument("--cases", default=",".join(CASES),
                        help="comma-separated target:quant list, eager:none first")
    parser.add_argument("--case", help="(rss mode) the case to load in this process")
    parser.add_argument("--max-seq-len", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8, help="scoring and training batch")
    parser.add_argument("--seq-buckets", default="32,48",
                        help="(ExecuTorch exports) score-method lengths besides --max-seq-len")
    parser.add_argument("--texts", type=int, default=200, help="MR sentences to score")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=3, help="training steps per repeat")
    parser.add_argument("--out", type=Path, default=Path("bench/results/edge_runtime"))
    parser.add_argument("--artefacts", type=Path, default=Path("runs/edge_runtime"),
                        help="where exported artefacts are made and reused")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        stream=sys.stderr)
    args = parse_args(argv)
    if args.mode == "rss":
        result = measure_rss(Case.parse(args.case), args.artefacts, args.model,
                             args.max_seq_len, args.batch)
        print(json.dumps(result))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    results = run_benchmark(args)
    env = environment(args)
    (args.out / "results.json").write_text(
        json.dumps({"environment": env, "cases": [asdict(r) for r in results]}, indent=2) + "\n")
    (args.out / "report.md").write_text(report(results, env))
    print(report(results, env))
    return 0


if __name__ == "__main__":
    sys.exit(main())
