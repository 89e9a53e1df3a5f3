"""``lpfl compare RUN_A RUN_B``: two results side by side, config and outcome.

Either argument is an output folder or its ``results.json`` (:mod:`lpfl.results`: a
simulation's or benchmark's runs, or an aggregator's one run, named by the first method and seed
of its config). Runs are matched by method and seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lpfl.results import differences, read_document


@dataclass(frozen=True)
class RunOutcome:
    """What one run ended with."""

    method: str
    seed: int
    final_accuracy: float | None
    rounds: int
    uplink_bytes: int
    made_by: str
    """lpfl version and git commit, when recorded."""


@dataclass(frozen=True)
class Results:
    path: Path
    config: Mapping[str, Any]
    runs: Sequence[RunOutcome]


def _made_by(provenance: Mapping[str, Any] | None) -> str:
    if not provenance:
        return "–"
    commit = str(provenance.get("git_commit") or "")[:12]
    return f"{provenance.get('lpfl', '?')} {commit}".strip()


def load_results(path: Path) -> Results:
    """The config and runs of an output folder or results file; an LpflError if it is not
    lpfl results."""
    file = path / "results.json" if path.is_dir() else path
    document = read_document(file)
    runs = [RunOutcome(str(r["method"]), int(r["seed"]), r.get("final_accuracy"),
                       len(r.get("rounds", [])),
                       sum(int(x.get("uplink_bytes") or 0) for x in r.get("rounds", [])),
                       _made_by(r.get("provenance")))
            for r in document["runs"]]
    return Results(file, document.get("config") or {}, runs)


def _accuracy(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def render_comparison(a: Results, b: Results) -> str:
    """Markdown: the config keys that differ, then every run of either side by method and
    seed."""
    lines = [f"# {a.path} against {b.path}", ""]
    changed = differences(a.config, b.config)
    if changed:
        lines += ["Config differences (A then B):", ""] + [f"- {line}" for line in changed]
    else:
        lines.append("Same config.")
    lines += ["", "| method | seed | accuracy A | accuracy B | B − A | rounds A | rounds B "
              "| uplink bytes A | uplink bytes B | made by A | made by B |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    left = {(r.method, r.seed): r for r in a.runs}
    right = {(r.method, r.seed): r for r in b.runs}
    for key in sorted(set(left) | set(right)):
        x, y = left.get(key), right.get(key)
        delta = ("–" if x is None or y is None or x.final_accuracy is None
                 or y.final_accuracy is None else f"{y.final_accuracy - x.final_accuracy:+.4f}")
        lines.append(
            f"| {key[0]} | {key[1]} | {_accuracy(x.final_accuracy if x else None)} | "
            f"{_accuracy(y.final_accuracy if y else None)} | {delta} | "
            f"{x.rounds if x else '–'} | {y.rounds if y else '–'} | "
            f"{f'{x.uplink_bytes:,}' if x else '–'} | {f'{y.uplink_bytes:,}' if y else '–'} | "
            f"{x.made_by if x else '–'} | {y.made_by if y else '–'} |")
    return "\n".join(lines) + "\n"
