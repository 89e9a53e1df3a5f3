"""The edge-runtime benchmark's bookkeeping: cases, ratios against eager fp32 and goal lines,
checked against the raw numbers they come from.

The measurements themselves need exported SmolLM2 programs and minutes of CPU; they run as the
benchmark (``python bench/edge_runtime.py``), not here.
"""

from __future__ import annotations

import pytest

from bench.edge_runtime import Case, CaseResult, environment, parse_args, report


def _results() -> list[CaseResult]:
    return [
        CaseResult("eager:none", None, None, 1.0, 900_000_000, 10.0, 1.0, 2.0),
        CaseResult("executorch-xnnpack:none", 540_000_000, 545_000_000, 0.5, 800_000_000, 12.0,
                   1.0, 6.0),
        CaseResult("executorch-xnnpack:int8", 150_000_000, 150_000_000, 0.3, 400_000_000, 25.0,
                   0.98, 2.5),
        # Exactly on every goal's line: 2x throughput, 97 % agreement, 30 % of the fp32 file.
        CaseResult("executorch-xnnpack:8da4w", 162_000_000, None, 0.3, 350_000_000, 20.0,
                   0.97, None),
        CaseResult("onnx:none", 600_000_000, None, 0.6, 950_000_000, 11.0, 1.0, None),
        CaseResult("onnx:int8", 200_000_000, None, 0.4, 500_000_000, 15.0, 0.95, None),
    ]


RUNS = {"every case": _results(),
        # Without its own fp32 program an ExecuTorch file is compared with ONNX fp32.
        "no xnnpack fp32": [r for r in _results() if r.case != "executorch-xnnpack:none"]}


def test_cases_parse_and_know_their_runtime() -> None:
    assert Case.parse("onnx:int8").runtime == "onnxruntime"
    assert Case.parse("executorch-portable").quant == "none"
    assert Case.parse("executorch-xnnpack:int8").trains_on_program
    assert not Case.parse("executorch-xnnpack:8da4w").trains_on_program
    assert Case.parse("eager:none").runtime == "eager"


def _table(text: str) -> dict[str, dict[str, str]]:
    """The report's table: case -> column header -> cell."""
    rows = [[cell.strip() for cell in line.strip("|").split("|")]
            for line in text.splitlines() if line.startswith("| ")]
    header, *body = rows
    return {row[0]: dict(zip(header, row, strict=True)) for row in body}


def _ratio(cell: str) -> float | None:
    return None if cell == "–" else float(cell.removesuffix("×"))


def _goals(text: str) -> dict[str, bool]:
    """Each goal line's verdicts: "case: goal" (or "case goal") -> met."""
    verdicts: dict[str, bool] = {}
    for line in text.split("## Goals")[1].splitlines():
        if not line.startswith("- "):
            continue
        case, _, rest = line[2:].partition(" ")
        for part in rest.split("; ") if case.endswith(":") else [rest]:
            goal, _, verdict = part.rpartition(": ")
            assert verdict in ("met", "**not met**"), line
            verdicts[f"{case.removesuffix(':')} {goal}"] = verdict == "met"
    return verdicts


@pytest.mark.parametrize("run", RUNS)
def test_the_table_ratios_follow_from_the_raw_numbers(run: str) -> None:
    results = RUNS[run]
    table = _table(report(results, environment(parse_args(["--model", "tiny-llama"]))))
    eager = results[0]
    assert list(table) == [r.case for r in results]
    fp32_files = {r.case.split(":")[0]: r.score_file_bytes for r in results
                  if r.case.endswith(":none")}
    for r in results:
        row = table[r.case]
        assert eager.sentences_per_s and r.sentences_per_s and eager.train_step_seconds
        assert _ratio(row["throughput ratio"]) == pytest.approx(
            r.sentences_per_s / eager.sentences_per_s, abs=0.005), r.case
        step = None if r.train_step_seconds is None else (
            r.train_step_seconds / eager.train_step_seconds)
        assert _ratio(row["step ratio"]) == pytest.approx(step, abs=0.005), r.case
        reference = fp32_files.get(r.case.split(":")[0]) or fp32_files.get("onnx")
        size = None if reference is None or r.score_file_bytes is None else (
            r.score_file_bytes / reference)
        assert _ratio(row["size ratio"]) == pytest.approx(size, abs=0.005), r.case
        assert row["sentences/s"] == f"{r.sentences_per_s:.2f}"
    # eager fp32 is its own reference; an int8 file against its own target's fp32 program.
    assert _ratio(table["eager:none"]["throughput ratio"]) == 1.0
    fp32_file = 540 if "executorch-xnnpack:none" in table else 600
    assert _ratio(table["executorch-xnnpack:int8"]["size ratio"]) == pytest.approx(
        150 / fp32_file, abs=0.005)


@pytest.mark.parametrize("run", RUNS)
def test_each_goal_is_judged_from_the_raw_numbers(run: str) -> None:
    results = RUNS[run]
    goals = _goals(report(results, environment(parse_args(["--model", "tiny-llama"]))))
    eager = results[0]
    assert eager.sentences_per_s and eager.train_step_seconds
    fp32 = {r.case.split(":")[0]: r for r in results if r.case.endswith(":none")}
    expected: dict[str, bool] = {}
    for r in results[1:]:
        target, quant = r.case.split(":")
        reference = fp32.get(target) or fp32.get("onnx")
        if quant != "none" and r.sentences_per_s:
            fp32_file = reference.score_file_bytes if reference else None
            expected[f"{r.case} throughput ≥ 2× eager"] = (
                r.sentences_per_s / eager.sentences_per_s >= 2)
            expected[f"{r.case} agreement ≥ 97 %"] = (r.agreement or 0) >= 0.97
            expected[f"{r.case} file ≤ 30 % of fp32"] = bool(
                fp32_file and r.score_file_bytes and r.score_file_bytes / fp32_file <= 0.3)
        if quant != "none" and r.train_file_bytes and reference and reference.train_file_bytes:
            expected[f"{r.case} training program ≤ 30 % of the fp32 one"] = (
                r.train_file_bytes / reference.train_file_bytes <= 0.3)
        if r.train_step_seconds:
            expected[f"{r.case} training step ≤ 1.5× eager"] = (
                r.train_step_seconds / eager.train_step_seconds <= 1.5)
    assert goals == expected
    assert set(goals.values()) == {True, False}
    if run == "every case":  # 8da4w sits on every line (2x, 97 %, 30 %) and meets each
        assert all(met for goal, met in goals.items()
                   if goal.startswith("executorch-xnnpack:8da4w"))
