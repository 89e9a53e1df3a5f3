"""The one report writer, for simulated runs and for a websocket run's rounds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lpfl.records import ClientOutcome, ClientRecord, ClientStatus, RoundRecord, Traffic
from lpfl.report import render_report, write_report


def record(round_number: int, accuracy: float, payload_up: int, wire_up: int = 0,
           clients: int = 2) -> RoundRecord:
    outcome = ClientOutcome(ClientStatus.UPDATED, 4, {"train_loss": 1.0,
                                                      "soft_labels_added": 3.0})
    return RoundRecord(round_number, 1, 2.0, {"accuracy": accuracy}, {}, [
        ClientRecord(f"c-{i}", outcome, Traffic(payload_up, 1000, wire_up, 1100))
        for i in range(clients)])


def run(method: str, seed: int, payload_up: int) -> dict[str, Any]:
    rows = [record(r, 0.5 + 0.1 * r, payload_up).summary() for r in (1, 2)]
    return {"method": method, "seed": seed, "final_accuracy": rows[-1]["accuracy"],
            "rounds": rows}


def test_simulated_runs_compare_methods(tmp_path: Path) -> None:
    zero_shot = RoundRecord(0, 1, 0.1, {"accuracy": 0.6}, {}, []).summary()
    runs = [run("lp-fl", 0, 100), run("lp-fl", 1, 100), run("fp-fl", 0, 50_000),
            {"method": "zero-shot", "seed": 0, "final_accuracy": 0.6, "raw_accuracy": 0.5,
             "rounds": [zero_shot]}]
    (tmp_path / "results.json").write_text(json.dumps({"config": {}, "runs": runs}))
    text = write_report(tmp_path).read_text()
    assert "| lp-fl | 2 | 0.700 ± 0.000 | 200 B | 2.0 KB |" in text
    assert "| zero-shot | 1 | 0.600 ± 0.000 (raw 0.500) |" in text
    assert "FP-FL clients send **500×** the bytes LP-FL clients send per round." in text
    assert "| lp-fl | 1 | 2 | 0.700 | 2 | 6 | - | 200 B | 2.0 |" in text
    assert "on wire" not in text and "would send" not in text
    assert (tmp_path / "report.png").stat().st_size > 0


def test_a_websocket_run_shows_the_wire_and_what_fp_fl_would_send(tmp_path: Path) -> None:
    rows = [record(r, 0.7, 100, wire_up=110).summary(wire=True) for r in (1, 2)]
    served = {"method": "lp-fl", "seed": 0, "final_accuracy": 0.7, "rounds": rows}
    text = render_report(tmp_path, [served], "served", ["A run."], full_model_bytes=10_000
                         ).read_text()
    assert text.startswith("# served\n\nA run.\n")
    # 2 rounds of 2 clients: 440 B on the wire, against 4 full models of 10 KB.
    assert "Clients sent 440 B in all; FP-FL clients would have sent 40.0 KB: **91×** more." \
        in text
    assert "| uplink | uplink on wire | overhead | downlink on wire | FP-FL would send | s |" \
        in text
    assert "| lp-fl | 0 | 2 | 0.700 | 2 | 6 | - | 200 B | 220 B | +10.00% | 2.2 KB | 20.0 KB |" \
        " 2.0 |" in text
    assert (tmp_path / "report.png").stat().st_size > 0
