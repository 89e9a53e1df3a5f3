"""The accuracy benchmark: every method over shots × partitions × seeds, tuned the same way.

Fairness rules, applied identically to every method:

* Every method gets the same labeled examples, unlabeled texts, rounds and gradient steps
  (see :mod:`lpfl.simulate`).
* Every trained method gets a search of the **same size**: ``[bench.search.METHOD]`` names
  settings (``"federation.lr"``, ``"soft_labels.threshold"``, ``"federation.weight_decay"``
  ...) and the values to try; the candidates are all their combinations, and a file that gives
  two methods different numbers of candidates is refused. Each candidate is scored once on the
  selection setting (``select_shots``, ``select_partition``, the first seed) by accuracy on the
  **validation** split (carved from the labeled training pool, disjoint from everything else);
  the best (the first on ties) is used for the whole grid. The test split is never looked at
  while choosing. The chosen values and every score are written into ``results.json``.
* ``matched_lr``: each ``*-no-soft`` method is also run over the grid at the learning rate
  chosen for its soft-label counterpart, so soft labels are compared at one learning rate too.
* ``[bench.transfer]``: the grid again with other settings (another corpus and its pattern),
  with the hyper-parameters chosen above: nothing is tuned on the transfer corpus.

Each finished run is appended to ``results.json`` at once; a rerun skips what is there, so the
grid can be finished over several sittings or split over processes. A results file made with
another config, model or environment is refused rather than resumed.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import platform
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lpfl.config import (
    PARTITIONS,
    ModelSettings,
    RunConfig,
    build_section,
    config_from_dict,
    read_toml,
    with_values,
)
from lpfl.errors import ConfigError
from lpfl.methods import METHODS, lookup
from lpfl.report import mean_std
from lpfl.results import ResultsFile
from lpfl.simulate import Progress, federated_data, print_progress, run_method

log = logging.getLogger(__name__)

Candidate = dict[str, Any]
"""Settings of one hyper-parameter candidate: ``{"federation.lr": 1e-3, ...}``."""


@dataclass(frozen=True)
class BenchSettings:
    """The ``[bench]`` table of a benchmark file: the grid, the search and the targets."""

    shots: tuple[int, ...] = (16, 32)
    partitions: tuple[str, ...] = ("iid", "dirichlet")
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = ("lp-fl", "lp-fl-no-soft", "fp-fl", "centralized",
                                "centralized-no-soft", "zero-shot")
    search: Mapping[str, Mapping[str, tuple[Any, ...]]] = field(default_factory=dict)
    select_shots: int = 16
    select_partition: str = "iid"
    matched_lr: bool = True
    transfer: Mapping[str, Any] = field(default_factory=dict)
    accuracy_targets: Mapping[str, float] = field(default_factory=dict)
    """Aimed-for LP-FL accuracy per number of shots (keys are the shots, e.g. ``"16"``)."""

    def __post_init__(self) -> None:
        for method in self.methods:
            if method not in METHODS:
                raise ConfigError(f"bench.methods: unknown method {method!r}")
            if method != "zero-shot" and not self.search.get(method):
                raise ConfigError(f"bench.search has no candidates for {method!r}: give it a "
                                  "[bench.search.METHOD] table, e.g. federation.lr = [1e-3]")
        for method, axes in self.search.items():
            for key, values in axes.items():
                if "." not in key or not values:
                    raise ConfigError(f"bench.search.{method}: {key!r} needs a section.key name "
                                      "and at least one value")
        sizes = {m: len(candidates(self, m)) for m in self.methods if m != "zero-shot"}
        if len(set(sizes.values())) > 1:
            raise ConfigError(f"bench.search gives methods different numbers of candidates "
                              f"{sizes}: every method must get a search of the same size")
        for partition in self.partitions:
            if partition not in PARTITIONS:
                raise ConfigError(f"bench.partitions: unknown partition {partition!r}")
        if not self.seeds or not self.shots:
            raise ConfigError("bench.seeds and bench.shots must not be empty")


def candidates(bench: BenchSettings, method: str) -> list[Candidate]:
    """Every combination of the method's search values, in file order."""
    axes = bench.search.get(method, {})
    keys = list(axes)
    return [dict(zip(keys, values, strict=True))
            for values in itertools.product(*(axes[k] for k in keys))]


def load_bench(path: Path, overrides: Sequence[str] = ()) -> tuple[RunConfig, BenchSettings]:
    """Read a benchmark TOML file: the run sections plus a ``[bench]`` table."""
    table = read_toml(path)
    bench = build_section(BenchSettings, table.pop("bench", {}), "bench")
    return config_from_dict(table, overrides), bench


def setting_config(config: RunConfig, shots: int, partition: str, method: str,
                   values: Mapping[str, Any]) -> RunConfig:
    """``config`` specialised to one grid cell, one method and its chosen ``values``; every
    method trains at ``federation.lr`` (per-method learning rates are cleared)."""
    return with_values(config, {"data.shots_per_class": shots, "data.partition": partition,
                                "run.methods": [method], "federation.learning_rates": {},
                                **values})


class AccuracyBenchmark:
    """Runs selection then the grid, appending every run to ``out/results.json``."""

    def __init__(self, config: RunConfig, bench: BenchSettings, out: Path,
                 progress: Progress = print_progress) -> None:
        self.config = config
        self.bench = bench
        self.progress = progress
        self.results = ResultsFile(out / "results.json", {
            "run": config.to_dict(), "bench": _plain(bench),
            "environment": environment(config.model),
        })
        self.results.require_same_config("config, model or environment")
        self.transfer_config = with_values(config, bench.transfer) if bench.transfer else None

    def _run(self, kind: str, method: str, shots: int, partition: str, seed: int,
             values: Candidate) -> dict[str, Any]:
        key = {"kind": kind, "method": method, "shots": shots, "partition": partition,
               "seed": seed, "values": dict(values)}
        done = [r for r in self.results.reload() if all(r.get(k) == v for k, v in key.items())]
        if done:
            return done[0]
        base = self.transfer_config if kind == "transfer" else self.config
        assert base is not None
        config = setting_config(base, shots, partition, method, values)
        data = federated_data(config, seed)
        if kind == "selection":  # score on validation; the test split stays unseen
            data = dataclasses.replace(data, test=data.validation)
        run = run_method(config, method, seed, data, self.progress)
        run.pop("lr", None)
        run.update(key, dataset=config.data.dataset)
        self.results.add(run)
        return run

    def select(self, method: str) -> Candidate:
        """The candidate with the best validation accuracy on the selection setting."""
        if method == "zero-shot":
            return {}
        b = self.bench
        scored = [(float(self._run("selection", method, b.select_shots, b.select_partition,
                                   b.seeds[0], c)["final_accuracy"]), -i, c)
                  for i, c in enumerate(candidates(b, method))]
        return max(scored, key=lambda t: (t[0], t[1]))[2]

    def run(self, names: Sequence[str]) -> dict[str, Candidate]:
        """Select hyper-parameters for the methods ``names``, then run the grid (and the
        matched and transfer runs the settings ask for)."""
        chosen = {m: self.select(m) for m in names}
        for method, values in chosen.items():
            self.progress(f"[selection] {method}: {values}")
        cells = list(itertools.product(self.bench.shots, self.bench.partitions, self.bench.seeds))
        for shots, partition, seed in cells:
            for method, values in chosen.items():
                self._run("grid", method, shots, partition, seed, values)
        if self.bench.matched_lr:
            for method in names:
                partner = lookup(method).soft_counterpart()
                if (partner is not None and partner.name in self.bench.methods
                        and "federation.lr" in chosen[method]):
                    lr = self.partner_lr(partner.name)
                    for shots, partition, seed in cells:
                        self._run("matched", method, shots, partition, seed,
                                  {**chosen[method], "federation.lr": lr})
        if self.transfer_config is not None:
            for shots, partition, seed in cells:
                for method, values in chosen.items():
                    self._run("transfer", method, shots, partition, seed, values)
        return chosen

    def partner_lr(self, method: str) -> float:
        """The learning rate chosen for ``method`` (selecting it if needed)."""
        return float(self.select(method)["federation.lr"])


def _plain(bench: BenchSettings) -> dict[str, Any]:
    plain = dataclasses.asdict(bench)
    plain["search"] = {m: {k: list(v) for k, v in axes.items()}
                       for m, axes in bench.search.items()}
    plain["transfer"] = dict(bench.transfer)
    plain["accuracy_targets"] = dict(bench.accuracy_targets)
    return plain


def environment(model: ModelSettings) -> dict[str, Any]:
    """What the numbers were measured with and on: library versions, the machine and the
    model's weights (:func:`~lpfl.model.loading.source_fingerprint`)."""
    import peft
    import transformers

    from lpfl.model.loading import source_fingerprint
    from lpfl.trainer_api import cpu_features, cpu_model

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "device": device, "cpu": cpu_model(),
            "cpu_features": cpu_features(), "cpu_count": os.cpu_count() or 0,
            "model": source_fingerprint(model)}


Setting = tuple[int, str]  # (shots per class, partition)


def grid_accuracies(runs: Sequence[Mapping[str, Any]], kind: str = "grid"
                    ) -> dict[Setting, dict[str, list[float]]]:
    """Final test accuracies of the runs of ``kind``, by setting (sorted) and method."""
    table: dict[Setting, dict[str, list[float]]] = {}
    for run in runs:
        if run.get("kind") == kind:
            per_method = table.setdefault((run["shots"], run["partition"]), {})
            per_method.setdefault(run["method"], []).append(float(run["final_accuracy"]))
    return dict(sorted(table.items()))


def grid_table(runs: Sequence[Mapping[str, Any]], methods: Sequence[str],
               kind: str = "grid") -> str:
    """Markdown: mean ± std of final test accuracy per setting (rows) and method (columns)."""
    lines = ["| shots/class | partition | " + " | ".join(methods) + " |",
             "|---|---|" + "---|" * len(methods)]
    for (shots, partition), per_method in grid_accuracies(runs, kind).items():
        cells = []
        for method in methods:
            values = per_method.get(method, [])
            mean, std = mean_std(values)
            cells.append(f"{mean:.3f} ± {std:.3f} (n={len(values)})" if values else "–")
        lines.append(f"| {shots} | {partition} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


GOALS = (("lp-fl-no-soft", 0.03, "LP-FL ≥ LP-FL without soft labels + 3 pts"),
         ("fp-fl", 0.0, "LP-FL ≥ FP-FL"),
         ("centralized-no-soft", 0.0, "LP-FL ≥ centralized without soft labels"),
         ("centralized", -0.01, "LP-FL ≥ centralized − 1 pt"))
"""(reference method, margin, text): LP-FL's mean must reach the reference's mean + margin."""


def goal_checks(runs: Sequence[Mapping[str, Any]], targets: Mapping[str, float],
                kind: str = "grid") -> list[str]:
    """The benchmark's goals, evaluated on the measured means (a line per goal and setting)."""
    lines = []
    for (shots, partition), per_method in grid_accuracies(runs, kind).items():
        means = {m: statistics.fmean(v) for m, v in per_method.items() if v}
        lp = means.get("lp-fl")
        if lp is None:
            continue
        checks = [(text, means[other], means[other] + margin)
                  for other, margin, text in GOALS if other in means]
        if str(shots) in targets:
            target = targets[str(shots)]
            checks.append((f"LP-FL ≥ {target:.2f}", target, target))
        for text, reference, needed in checks:
            verdict = "met" if lp >= needed - 1e-12 else "NOT met"
            lines.append(f"| {shots} | {partition} | {text} | {lp:.3f} vs {reference:.3f} | "
                         f"{verdict} |")
    return ["| shots/class | partition | goal | measured | verdict |", "|---|---|---|---|---|",
            *lines]


def soft_label_table(runs: Sequence[Mapping[str, Any]], kind: str = "grid") -> str:
    """Markdown: LP-FL's last-round soft-label diagnostics per setting, mean over seeds."""
    fields = ("soft_labels_added", "soft_label_accuracy", "teacher_pool_accuracy",
              "student_pool_accuracy", "gold_share")
    rows: dict[Setting, list[Mapping[str, Any]]] = {}
    for run in runs:
        if run.get("kind") == kind and run["method"] == "lp-fl" and run["rounds"]:
            rows.setdefault((run["shots"], run["partition"]), []).append(run["rounds"][-1])
    lines = ["| shots/class | partition | " + " | ".join(fields) + " |",
             "|---|---|" + "---|" * len(fields)]
    for (shots, partition), last in sorted(rows.items()):
        cells = []
        for name in fields:
            values = [float(x[name]) for x in last if x.get(name) is not None]
            cells.append(f"{statistics.fmean(values):.3g}" if values else "–")
        lines.append(f"| {shots} | {partition} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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


def accuracy_summary(runs: Sequence[Mapping[str, Any]], bench: Mapping[str, Any],
                     environment: Mapping[str, Any]) -> list[str]:
    """The tables a reader needs, in Markdown lines: the grid, the goals, the matched-lr and
    transfer grids where they ran, and the soft-label diagnostics."""
    methods = list(bench["methods"])
    targets = bench.get("accuracy_targets", {})
    lines = [f"Measured on: {', '.join(f'{k} {v}' for k, v in environment.items())}.", "",
             "Final test accuracy, mean ± std over seeds:", "", grid_table(runs, methods), "",
             "Goals:", "", *goal_checks(runs, targets), ""]
    if any(r.get("kind") == "matched" for r in runs):
        matched = ["lp-fl", "lp-fl-no-soft", "centralized", "centralized-no-soft"]
        mixed = [r for r in runs if r.get("kind") == "grid" and r["method"] in matched
                 and lookup(r["method"]).soft]
        mixed += [{**r, "kind": "grid"} for r in runs if r.get("kind") == "matched"]
        lines += ["At one learning rate (each method without soft labels at the rate chosen "
                  "for its counterpart with them):", "",
                  grid_table(mixed, [m for m in matched if m in methods]), ""]
    if any(r.get("kind") == "transfer" for r in runs):
        transfer = bench.get("transfer", {})
        lines += [f"Transfer ({', '.join(f'{k} = {v!r}' for k, v in transfer.items())}; "
                  "hyper-parameters chosen on the benchmark's own validation split):", "",
                  grid_table(runs, methods, "transfer"), "", *goal_checks(runs, {}, "transfer"),
                  ""]
    lines += ["LP-FL's soft labels in the last round (against the hidden labels; the teacher "
              "and the student scored on the clients' whole unlabeled pools):", "",
              soft_label_table(runs), ""]
    return lines


def candidate_of(run: Mapping[str, Any]) -> dict[str, Any]:
    """The searched values of a selection run (files written before candidate sets recorded
    ``lr`` and ``threshold`` instead)."""
    if "values" in run:
        return dict(run["values"])
    old = {"federation.lr": run.get("lr"), "soft_labels.threshold": run.get("threshold")}
    return {k: v for k, v in old.items() if v is not None}


def write_bench_report(out: Path, runs: Sequence[Mapping[str, Any]],
                       config: Mapping[str, Any]) -> Path:
    """``report.md`` and ``accuracy.png`` for a benchmark folder."""
    bench = config["bench"]
    plot_grid(runs, bench["methods"], out / "accuracy.png")
    selection = [r for r in runs if r.get("kind") == "selection"]
    lines = ["# Accuracy benchmark", "",
             *accuracy_summary(runs, bench, config.get("environment", {})),
             "![accuracy](accuracy.png)", "",
             "Hyper-parameter search (validation accuracy, never the test split):", "",
             "| method | candidate | validation accuracy |", "|---|---|---|"]
    lines += [f"| {r['method']} | {candidate_of(r)} | {r['final_accuracy']:.3f} |"
              for r in selection]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


README_START = "<!-- accuracy-benchmark: start -->"
README_END = "<!-- accuracy-benchmark: end -->"


def update_readme(readme: Path, out: Path, runs: Sequence[Mapping[str, Any]],
                  config: Mapping[str, Any]) -> None:
    """Replace the block between :data:`README_START` and :data:`README_END` in ``readme``
    with the tables of :func:`accuracy_summary`, naming the results file they come from."""
    text = readme.read_text(encoding="utf-8")
    if README_START not in text or README_END not in text:
        raise ConfigError(f"{readme} has no {README_START} … {README_END} block to replace")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    body = [f"From `{out / 'results.json'}` (`lpfl bench accuracy --out {out} --report-only "
            f"--readme {readme}`).", "",
            *accuracy_summary(runs, config["bench"], config.get("environment", {}))]
    readme.write_text(head + README_START + "\n" + "\n".join(body) + README_END + tail,
                      encoding="utf-8")
