"""The aggregator benchmark (``bench/aggregator.py``) runs end to end with a handful of clients.

This checks the benchmark itself, not the server's speed: the round completes, every upload is
counted, and each measurement exists and is plausible. No timing is asserted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import aggregator

CLIENTS = 5


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> aggregator.BenchResult:
    """One 5-client round, shared by the tests below (it costs a server process start)."""
    return aggregator.run_benchmark(CLIENTS, tmp_path_factory.mktemp("bench"), timeout_s=60.0)


def test_lora_state_has_smollm2_size() -> None:
    state = aggregator.random_adapter(seed=1)
    assert len(state) == 120
    assert aggregator.model_values() == sum(t.numel() for t in state.values()) == 460_800
    name = "base_model.model.model.layers.29.self_attn.v_proj.lora_B.weight"
    assert tuple(state[name].shape) == (192, 8)


def test_round_completes_and_counts_every_upload(result: aggregator.BenchResult) -> None:
    assert result.clients == CLIENTS
    assert result.uploads_accepted == CLIENTS
    assert result.client_errors == []
    assert result.payload_uplink_bytes == CLIENTS * result.update_payload_bytes
    # The wire carries the payload plus framing and handshakes. The clients' own count also
    # holds their close frames, sent after the server closed the round's byte window.
    assert result.wire_uplink_bytes > result.payload_uplink_bytes
    assert 0 <= result.client_wire_bytes_out - result.wire_uplink_bytes < 1024 * CLIENTS
    assert result.wire_downlink_bytes > result.payload_downlink_bytes > 0


def test_measurements_are_sane(result: aggregator.BenchResult) -> None:
    assert result.round_seconds > 0
    assert result.uploads_per_second > 0
    assert result.server_peak_rss_bytes >= result.server_rss_listening_bytes > 0
    assert "training" in result.server_peak_rss_by_phase
    assert result.rss_timeline


def test_outputs_merge_and_report(result: aggregator.BenchResult, tmp_path: Path) -> None:
    aggregator.write_outputs(tmp_path, [result], "test")
    bigger = aggregator.BenchResult(**{**result.__dict__, "clients": 2 * CLIENTS})
    entries = aggregator.write_outputs(tmp_path, [bigger, result], "test")
    document = json.loads((tmp_path / "results.json").read_text())
    assert [e["clients"] for e in document["runs"]] == [CLIENTS, 2 * CLIENTS] == [
        e["clients"] for e in entries]
    assert {"python", "torch", "websockets", "cpu_count"} <= set(document["environment"])
    assert aggregator.verdict(entries)[0] == "O(model)"  # same peak at both counts
    report = (tmp_path / "report.md").read_text()
    assert "| 5 | fp32 |" in report and "aggregator.png" in report
    assert (tmp_path / "aggregator.png").stat().st_size > 0
