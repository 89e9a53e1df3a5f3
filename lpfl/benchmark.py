"""The accuracy benchmark: every method over shots × partitions × seeds, tuned the same way.

Fairness rules, applied identically to every method:

* Every method gets the same labeled examples, unlabeled texts, rounds and gradient steps
  (see :mod:`lpfl.simulate`).
* Hyper-parameters are chosen on one setting (``select_shots``, ``select_partition``, the first
  seed) by a two-stage search scored on the **validation** split (carved from the labeled
  training pool, disjoint from everything else): first the learning rate from the method's grid
  with the default soft-label threshold, then, for methods with soft labels, the threshold from
  ``thresholds`` with that learning rate. The test split is never looked at while choosing. The
  chosen values and every score are written into ``results.json``.

Each finished run is appended to ``results.json`` at once; a rerun skips what is there, so the
grid can be finished over several sittings. A results file made with another config, model or
environment is refused rather than resumed.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lpfl.config import (
    METHODS,
    PARTITIONS,
    ModelSettings,
    RunConfig,
    build_section,
    config_from_dict,
    read_toml,
)
from lpfl.errors import ConfigError
from lpfl.report import mean_std
from lpfl.results import ResultsFile
from lpfl.simulate import Progress, federated_data, print_progress, run_method

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchSettings:
    """The ``[bench]`` table of a benchmark file: the grid and the tuning search."""

    shots: tuple[int, ...] = (16, 32)
    partitions: tuple[str, ...] = ("iid", "dirichlet")
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = ("lp-fl", "lp-fl-no-soft", "fp-fl", "centralized", "zero-shot")
    lr_grid: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    thresholds: tuple[float, ...] = (0.7, 0.9)
    select_shots: int = 16
    select_partition: str = "iid"

    def __post_init__(self) -> None:
        for method in self.methods:
            if method not in METHODS:
                raise ConfigError(f"bench.methods: unknown method {method!r}")
            if method != "zero-shot" and not self.lr_grid.get(method):
                raise ConfigError(f"bench.lr_grid has no learning rates for {method!r}")
        for partition in self.partitions:
            if partition not in PARTITIONS:
                raise ConfigError(f"bench.partitions: unknown partition {partition!r}")
        if not self.seeds or not self.shots:
            raise ConfigError("bench.seeds and bench.shots must not be empty")


def load_bench(path: Path, overrides: Sequence[str] = ()) -> tuple[RunConfig, BenchSettings]:
    """Read a benchmark TOML file: the run sections plus a ``[bench]`` table."""
    table = read_toml(path)
    bench = build_section(BenchSettings, table.pop("bench", {}), "bench")
    return config_from_dict(table, overrides), bench


def setting_config(config: RunConfig, shots: int, partition: str, method: str,
                   lr: float | None, threshold: float | None) -> RunConfig:
    """``config`` specialised to one grid cell and one method's hyper-parameters."""
    rates = {} if lr is None else {method: lr}
    fed = dataclasses.replace(config.federation, learning_rates=rates)
    soft = config.soft_labels
    if threshold is not None:
        soft = dataclasses.replace(soft, threshold=threshold)
    data = dataclasses.replace(config.data, shots_per_class=shots, partition=partition)
    run = dataclasses.replace(config.run, methods=(method,))
    return dataclasses.replace(config, federation=fed, soft_labels=soft, data=data, run=run)


def has_soft_labels(method: str) -> bool:
    return method != "zero-shot" and not method.endswith("-no-soft")


class AccuracyBenchmark:
    """Runs selection then the grid, appending every run to ``out/results.json``."""

    def __init__(self, config: RunConfig, bench: BenchSettings, out: Path,
                 progress: Progress = print_progress) -> None:
        self.config = config
        self.bench = bench
        self.progress = progress
        self.results = ResultsFile(out / "results.json", {
            "run": config.to_dict(), "bench": _plain_bench(bench),
            "environment": environment(config.model),
        })
        self.results.require_same_config("config, model or environment")

    def _run(self, kind: str, method: str, shots: int, partition: str, seed: int,
             lr: float | None, threshold: float | None) -> dict[str, Any]:
        key = {"kind": kind, "method": method, "shots": shots, "partition": partition,
               "seed": seed, "lr": lr, "threshold": threshold}
        done = [r for r in self.results.reload() if all(r.get(k) == v for k, v in key.items())]
        if done:
            return done[0]
        config = setting_config(self.config, shots, partition, method, lr, threshold)
        data = federated_data(config, seed)
        if kind == "selection":  # score on validation; the test split stays unseen
            data = dataclasses.replace(data, test=data.validation)
        run = run_method(config, method, seed, data, self.progress)
        run.pop("lr", None)
        run.update(key)
        self.results.add(run)
        return run

    def select(self, method: str) -> tuple[float | None, float | None]:
        """Two-stage search on the validation split: learning rate, then threshold."""
        if method == "zero-shot":
            return None, None
        b, seed = self.bench, self.bench.seeds[0]
        default_threshold = self.config.soft_labels.threshold if has_soft_labels(method) else None

        def score(lr: float, threshold: float | None) -> float:
            run = self._run("selection", method, b.select_shots, b.select_partition, seed, lr,
                            threshold)
            return float(run["final_accuracy"])

        lr = max(b.lr_grid[method], key=lambda x: (score(x, default_threshold), -x))
        if default_threshold is None:
            return lr, None
        candidates = sorted({default_threshold, *b.thresholds})
        threshold = max(candidates, key=lambda t: (score(lr, t), t == default_threshold))
        return lr, threshold

    def run(self, methods: Sequence[str]) -> dict[str, tuple[float | None, float | None]]:
        """Select hyper-parameters for ``methods``, then run them over the whole grid."""
        chosen = {m: self.select(m) for m in methods}
        for method, (lr, threshold) in chosen.items():
            self.progress(f"[selection] {method}: lr {lr}, threshold {threshold}")
        for shots in self.bench.shots:
            for partition in self.bench.partitions:
                for seed in self.bench.seeds:
                    for method, (lr, threshold) in chosen.items():
                        self._run("grid", method, shots, partition, seed, lr, threshold)
        return chosen


def _plain_bench(bench: BenchSettings) -> dict[str, Any]:
    plain = dataclasses.asdict(bench)
    plain["lr_grid"] = {k: list(v) for k, v in bench.lr_grid.items()}
    return plain


def environment(model: ModelSettings) -> dict[str, Any]:
    """What the numbers were measured with and on: library versions, the machine and the
    model's weights (:func:`~lpfl.model.loading.source_fingerprint`)."""
    import peft
    import transformers

    from lpfl.model.loading import source_fingerprint

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor()
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "device": device,
            "model": source_fingerprint(model)}


Setting = tuple[int, str]  # (shots per class, partition)


def grid_accuracies(runs: Sequence[Mapping[str, Any]]) -> dict[Setting, dict[str, list[float]]]:
    """Final test accuracies of the grid runs, by setting (sorted) and method."""
    table: dict[Setting, dict[str, list[float]]] = {}
    for run in runs:
        if run.get("kind") == "grid":
            per_method = table.setdefault((run["shots"], run["partition"]), {})
            per_method.setdefault(run["method"], []).append(float(run["final_accuracy"]))
    return dict(sorted(table.items()))


def grid_table(runs: Sequence[Mapping[str, Any]], methods: Sequence[str]) -> str:
    """Markdown: mean ± std of final test accuracy per setting (rows) and method (columns)."""
    lines = ["| shots/class | partition | " + " | ".join(methods) + " |",
             "|---|---|" + "---|" * len(methods)]
    for (shots, partition), per_method in grid_accuracies(runs).items():
        cells = []
        for method in methods:
            values = per_method.get(method, [])
            mean, std = mean_std(values)
            cells.append(f"{mean:.3f} ± {std:.3f} (n={len(values)})" if values else "–")
        lines.append(f"| {shots} | {partition} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goal_checks(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The issue's goals, evaluated on the measured means (a line per goal and setting)."""
    lines = []
    for (shots, partition), per_method in grid_accuracies(runs).items():

        def mean(method: str, values: Mapping[str, list[float]] = per_method) -> float | None:
            return statistics.fmean(values[method]) if values.get(method) else None

        lp = mean("lp-fl")
        if lp is None:
            continue
        for other, margin, text in (("fp-fl", 0.0, "LP-FL ≥ FP-FL"),
                                    ("centralized", -0.01, "LP-FL ≥ centralized − 1 pt"),
                                    ("lp-fl-no-soft", 0.0, "LP-FL > LP-FL without soft labels"),
                                    ("zero-shot", 0.05, "LP-FL ≥ calibrated zero-shot + 5 pts")):
            ref = mean(other)
            if ref is None:
                continue
            ok = lp > ref if other == "lp-fl-no-soft" else lp >= ref + margin
            lines.append(f"| {shots} | {partition} | {text} | {lp:.3f} vs {ref:.3f} | "
                         f"{'met' if ok else 'NOT met'} |")
    return ["| shots/class | partition | goal | measured | verdict |", "|---|---|---|---|---|",
            *lines]


def plot_grid(runs: Sequence[Mapping[str, Any]], methods: Sequence[str], path: Path) -> None:
    """Grouped bars: mean test accuracy (± std) per setting and method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = grid_accuracies(runs)
    settings = list(table)
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(len(methods), 1)
    for j, method in enumerate(methods):
        stats = [mean_std(table[s].get(method, [])) for s in settings]
        xs = [i + j * width for i in range(len(settings))]
        ax.bar(xs, [m for m, _ in stats], width, yerr=[s for _, s in stats], label=method,
               capsize=2)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(settings))])
    ax.set_xticklabels([f"{s} shots, {p}" for s, p in settings])
    ax.set_ylim(0.4, 1.0)
    ax.set_ylabel("final test accuracy")
    ax.legend(fontsize=8, ncol=3)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_bench_report(out: Path, runs: Sequence[Mapping[str, Any]],
                       methods: Sequence[str], config: Mapping[str, Any]) -> Path:
    """``report.md`` and ``accuracy.png`` for a benchmark folder."""
    plot_grid(runs, methods, out / "accuracy.png")
    selection = [r for r in runs if r.get("kind") == "selection"]
    lines = ["# Accuracy benchmark", "", f"Environment: `{config.get('environment')}`", "",
             "Final test accuracy, mean ± std over seeds:", "", grid_table(runs, methods), "",
             "![accuracy](accuracy.png)", "", "Goals:", "", *goal_checks(runs), "",
             "Hyper-parameter selection (validation accuracy, never the test split):", "",
             "| method | lr | threshold | validation accuracy |", "|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['lr']:g} | {r['threshold']} | {r['final_accuracy']:.3f} |"
              for r in selection]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
