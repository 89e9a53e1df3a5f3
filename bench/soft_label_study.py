"""Soft-label ablation study: named variants of one run file, several seeds, one results file.

    python bench/soft_label_study.py --config bench/soft_labels.toml --out DIR \
        [--variants a,b] [--seeds 0,1] [--split validation|test]

The study file is a run file plus a ``[variants.NAME]`` table per variant: ``method`` (an
``lpfl simulate`` method), ``set`` (``--set``-style overrides) and run-file tables merged over
the base file's (``[variants.NAME.soft_labels]``). Every run is scored on the
``--split`` (``validation`` by default, so variants can be compared and chosen without looking at
the test split) and appended to ``DIR/results.json`` at once. A rerun skips finished runs (same
variant name, changes and seed), variants can be added to the file later, and several processes
may share one ``--out`` (each takes its own variants or seeds). ``report.md`` in ``DIR`` gives,
per variant, the final accuracy (mean ± std over seeds) and the per-round soft-label
diagnostics: soft labels added, their accuracy, the teacher's and the student's accuracy on the
unlabeled pools (against hidden labels) and the share of labeled examples among
what the clients trained on.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from lpfl.benchmark import environment
from lpfl.config import RunConfig, config_from_dict, read_toml
from lpfl.errors import ConfigError, LpflError
from lpfl.methods import METHODS
from lpfl.results import ResultsFile
from lpfl.simulate import federated_data, run_method

ROUND_FIELDS = ("teacher_accuracy", "soft_labels_added", "soft_label_accuracy",
                "teacher_pool_accuracy", "student_pool_accuracy", "gold_share")


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    method: str
    overrides: tuple[str, ...]
    sections: Mapping[str, Mapping[str, Any]]
    """Run-file tables merged over the base file's (e.g. ``soft_labels``)."""

    def described(self) -> list[str]:
        """Every change this variant makes to the base, as ``section.key=value`` lines."""
        return [*self.overrides, *(f"{section}.{key}={value!r}"
                                   for section, table in self.sections.items()
                                   for key, value in table.items())]


def load_study(path: Path) -> tuple[dict[str, Any], dict[str, Variant]]:
    """The run-file part (a dict) and the variants of a study file."""
    table = read_toml(path)
    raw = table.pop("variants", {})
    if not raw:
        raise ConfigError(f"{path}: no [variants.NAME] tables")
    variants = {}
    for name, spec in raw.items():
        method = spec.get("method", "lp-fl")
        if method not in METHODS or method == "zero-shot":
            raise ConfigError(f"{path}: variants.{name}.method={method!r} is not a trained method")
        sections = {k: v for k, v in spec.items() if k not in ("method", "set")}
        scalars = [k for k, v in sections.items() if not isinstance(v, Mapping)]
        if scalars:
            raise ConfigError(f"{path}: variants.{name} has unknown keys {scalars} (a variant "
                              "holds method, set and run-file tables)")
        variants[name] = Variant(name, method, tuple(spec.get("set", ())), sections)
    return table, variants


def variant_config(table: Mapping[str, Any], variant: Variant) -> RunConfig:
    merged = {k: dict(v) if isinstance(v, Mapping) else v for k, v in table.items()}
    for section, values in variant.sections.items():
        merged[section] = {**merged.get(section, {}), **values}
    config = config_from_dict(merged, variant.overrides)
    return dataclasses.replace(config, run=dataclasses.replace(config.run,
                                                               methods=(variant.method,)))


def run_study(table: Mapping[str, Any], variants: Sequence[Variant], seeds: Sequence[int],
              split: str, results: ResultsFile) -> None:
    for seed in seeds:
        for variant in variants:
            if any((r["variant"], r["method"], r["overrides"], r["seed"], r["split"])
                   == (variant.name, variant.method, variant.described(), seed, split)
                   for r in results.reload()):
                continue
            config = variant_config(table, variant)
            torch.set_num_threads(config.run.threads)
            data = federated_data(config, seed)
            if split == "validation":
                data = dataclasses.replace(data, test=data.validation)
            run = run_method(config, variant.method, seed, data)
            run.update(variant=variant.name, split=split, overrides=variant.described())
            results.add(run)


def _mean(values: Sequence[float]) -> str:
    if not values:
        return "–"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {std:.3f}"


def report(runs: Sequence[Mapping[str, Any]], split: str,
           environment: Mapping[str, Any]) -> str:
    """Markdown: final accuracy per variant, then the per-round soft-label diagnostics."""
    names = list(dict.fromkeys(r["variant"] for r in runs if r["split"] == split))
    measured = ", ".join(f"{k} {v}" for k, v in environment.items())
    lines = ["# Soft-label study", "", f"Measured with: {measured}.", "",
             f"Final {split} accuracy, mean ± std over seeds:", "",
             "| variant | method | overrides | seeds | accuracy |", "|---|---|---|---|---|"]
    for name in names:
        group = [r for r in runs if r["variant"] == name and r["split"] == split]
        seeds = ",".join(str(r["seed"]) for r in group)
        lines.append(f"| {name} | {group[0]['method']} | {' '.join(group[0]['overrides'])} | "
                     f"{seeds} | {_mean([r['final_accuracy'] for r in group])} |")
    lines += ["", "Per round, mean over seeds (soft labels added is summed over clients; "
              "accuracies pool every client's texts):", "",
              "| variant | round | accuracy | " + " | ".join(ROUND_FIELDS) + " |",
              "|---|---|---|" + "---|" * len(ROUND_FIELDS)]
    for name in names:
        group = [r for r in runs if r["variant"] == name and r["split"] == split]
        for index in range(len(group[0]["rounds"])):
            rows = [r["rounds"][index] for r in group if len(r["rounds"]) > index]
            cells = [_mean([x["accuracy"] for x in rows if x["accuracy"] is not None])]
            for field in ROUND_FIELDS:
                values = [float(x[field]) for x in rows if x.get(field) is not None]
                cells.append(f"{statistics.fmean(values):.3g}" if values else "–")
            lines.append(f"| {name} | {index + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True, help="study TOML")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--variants", help="comma-separated subset of the file's variants")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    parser.add_argument("--split", choices=("validation", "test"), default="validation")
    args = parser.parse_args(argv)
    try:
        table, variants = load_study(args.config)
        chosen = args.variants.split(",") if args.variants else list(variants)
        missing = [name for name in chosen if name not in variants]
        if missing:
            raise ConfigError(f"--variants {missing}: not in {args.config} ({list(variants)})")
        seeds = [int(s) for s in args.seeds.split(",")]
        base = config_from_dict(table)
        results = ResultsFile(args.out / "results.json", {
            "base": table, "environment": environment(base.model)})
        results.require_same_config("base settings, model or environment")
        run_study(table, [variants[name] for name in chosen], seeds, args.split, results)
    except LpflError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    (args.out / "report.md").write_text(
        report(results.reload(), args.split, results.config["environment"]), encoding="utf-8")
    print(f"wrote {args.out / 'results.json'} and {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
