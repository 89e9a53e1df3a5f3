"""The optimum benchmark's bookkeeping: requirement conflicts, the CPU line and the report.

The exports and measurements need optimum beside the pinned stack and minutes of CPU; they run
as the benchmark (``python bench/optimum_export.py``), not here.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from bench.optimum_export import (
    CaseResult,
    cpu_summary,
    export_command,
    render_report,
    requirement_conflicts,
)

INSTALLED = {"transformers": "4.57.6", "optimum": "2.1.0", "torch": "2.13.0+cpu",
             "huggingface-hub": "0.36.2"}


def test_conflicts_name_the_requirement_and_the_installed_version() -> None:
    requires = {"optimum-executorch 1.1.0": ["optimum~=2.0.0", "transformers==5.0.0rc1",
                                             "accelerate>=0.26.0",
                                             "pytest; extra == 'tests'"],
                "optimum-onnx 0.1.0": ["optimum~=2.1.0", "transformers<4.58.0,>=4.36",
                                       "torch>=1.11"]}
    assert requirement_conflicts(requires, INSTALLED) == [
        "optimum-executorch 1.1.0 requires optimum~=2.0.0 (installed: 2.1.0)",
        "optimum-executorch 1.1.0 requires transformers==5.0.0rc1 (installed: 4.57.6)",
        "optimum-executorch 1.1.0 requires accelerate>=0.26.0 (installed: none)",
    ]


def test_cpu_summary_keeps_model_count_and_simd_flags() -> None:
    lscpu = ("Architecture:   x86_64\nCPU(s):   2\nModel name:   AMD EPYC\n"
             "Flags:   fpu sse2 avx2 fma avx512f avx512_vnni\n")
    assert cpu_summary(lscpu) == {"model": "AMD EPYC", "cpus": "2",
                                  "flags": ["avx2", "avx512f", "avx512_vnni", "fma"]}


def test_report_without_optimum_says_why() -> None:
    results = {"environment": {"cpu": {"model": "AMD EPYC", "cpus": "2", "flags": ["avx2"]},
                               "python": "Python 3.11.7", "versions": {"torch": "2.13.0+cpu",
                                                                       "optimum": None}},
               "conflicts": ["optimum-onnx 0.1.0 requires transformers<4.58 (installed: 5.0)"],
               "import_errors": {"optimum-onnx": "import optimum.onnxruntime: ImportError: x"}}
    report = render_report(results)
    assert "AMD EPYC, 2 CPUs, flags avx2" in report
    assert "torch 2.13.0+cpu" in report and "optimum None" not in report
    assert "- optimum-onnx 0.1.0 requires transformers<4.58 (installed: 5.0)" in report
    assert "- optimum-onnx: import optimum.onnxruntime: ImportError: x" in report
    assert "No case ran." in report


def test_report_rows_and_ratio_against_eager() -> None:
    ok = CaseResult("optimum-onnx:none", status="ok", export_s=120.4, program_bytes=540_000_000,
                    inputs=["input_ids", "attention_mask", "position_ids"],
                    output_floats_per_batch=8 * 30 * 49152, max_abs_diff=2e-5, agreement=1.0,
                    batch_s=0.25, notes=["no adapter input"])
    failed = CaseResult("optimum-et:8da4w", status="failed", error="RuntimeError: boom")
    results = {"environment": {"cpu": {"model": "AMD EPYC", "cpus": "2", "flags": []},
                               "python": "Python 3.11.7", "versions": {}},
               "conflicts": [], "import_errors": {},
               "setup": {"texts": 64, "batch": 8, "repeats": 5, "threads": 1,
                         "eager_batch_s": 0.5},
               "cases": {c.name: asdict(c) for c in (ok, failed)}}
    report = render_report(results)
    assert ("| optimum-onnx:none | ok | 120 | 540.0 | no | 11796480 | 2.00e-05 | 100.0 % | – | "
            "0.250 | 2.00× |") in report
    assert "| optimum-et:8da4w | failed | – | – | no | – | – | – | – | – | – |" in report
    assert "- error: `RuntimeError: boom`" in report
    assert "- no adapter input" in report


def test_lpfl_cases_export_with_the_lpfl_command() -> None:
    cmd = export_command("lpfl-et:8da4w", Path("/a"))
    assert Path(cmd[0]).name == "lpfl"
    assert cmd[1:8] == ["export", "--model", "smollm2", "--target", "executorch-xnnpack",
                        "--quant", "8da4w"]
    assert cmd[-2:] == ["--out", "/a/lpfl-et-8da4w"]
    assert export_command("optimum-onnx:int8", Path("/a"))[2:] == [
        "export-one", "--case", "optimum-onnx:int8", "--artefacts", "/a"]
