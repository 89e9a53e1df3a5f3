"""The edge-runtime benchmark's bookkeeping: cases, ratios against eager fp32 and goal lines.

The measurements themselves need exported SmolLM2 programs and minutes of CPU; they run as the
benchmark (``python bench/edge_runtime.py``), not here.
"""

from __future__ import annotations

from bench.edge_runtime import Case, CaseResult, environment, parse_args, report


def _results() -> list[CaseResult]:
    return [
        CaseResult("eager:none", None, None, 1.0, 900_000_000, 10.0, 1.0, 2.0),
        CaseResult("executorch-xnnpack:none", 540_000_000, 545_000_000, 0.5, 800_000_000, 12.0,
                   1.0, 6.0),
        CaseResult("executorch-xnnpack:int8", 150_000_000, 150_000_000, 0.3, 400_000_000, 25.0,
                   0.98, 2.5),
        CaseResult("onnx:int8", 200_000_000, None, 0.4, 500_000_000, 15.0, 0.95, None),
    ]


def test_cases_parse_and_know_their_runtime() -> None:
    assert Case.parse("onnx:int8").runtime == "onnxruntime"
    assert Case.parse("executorch-portable").quant == "none"
    assert Case.parse("executorch-xnnpack:int8").trains_on_program
    assert not Case.parse("executorch-xnnpack:8da4w").trains_on_program
    assert Case.parse("eager:none").runtime == "eager"


def test_report_gives_ratios_against_eager_fp32_and_judges_the_goals() -> None:
    text = report(_results(), environment(parse_args(["--model", "tiny-llama"])))
    int8 = next(line for line in text.splitlines() if line.startswith("| executorch-xnnpack:int8"))
    assert "2.50×" in int8  # throughput 25 vs 10 sentences/s
    assert "0.28×" in int8  # 150 MB of 540 MB
    assert "1.25×" in int8  # training step 2.5 s vs 2.0 s
    goals = text.split("## Goals")[1]
    assert ("executorch-xnnpack:int8: throughput ≥ 2× eager: met; agreement ≥ 97 %: met; "
            "file ≤ 30 % of fp32: met") in goals
    assert "onnx:int8: throughput ≥ 2× eager: **not met**; agreement ≥ 97 %: **not met**" in goals
    assert "executorch-xnnpack:none training step ≤ 1.5× eager: **not met**" in goals
    assert "executorch-xnnpack:int8 training step ≤ 1.5× eager: met" in goals
