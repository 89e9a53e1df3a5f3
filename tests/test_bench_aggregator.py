"""The aggregator benchmark (``bench/aggregator.py``) runs end to end with a handful of clients.

This checks the benchmark itself, not the server's speed: the round completes, every upload is
counted, the measurements agree with each other and the report and verdict follow from them.
No speed is asserted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import aggregator

CLIENTS = 5
HWM_LAG_BYTES = 4 * 2**20


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


def test_measurements_agree_with_each_other(result: aggregator.BenchResult) -> None:
    """Each number against the others it must agree with, not merely > 0."""
    assert result.uploads_per_second == pytest.approx(
        result.uploads_accepted / result.round_seconds)
    # The server's round (tasks queued to close) lies inside the clients' session (first
    # connection to last exit).
    assert 0 < result.round_seconds < result.clients_seconds
    # An fp32 safetensors payload: 4 bytes a value plus a header under 1 % of it; the task each
    # client downloads is the same layout in fp32, so downlink and uplink payloads are equal.
    raw = 4 * result.model_values
    assert raw < result.update_payload_bytes < 1.01 * raw
    assert result.payload_downlink_bytes == result.payload_uplink_bytes
    # VmHWM is the high-water mark: at least every sampled RSS, up to the kernel's lag in
    # folding per-thread RSS counters into it (seen: 43 pages). The timeline keeps each
    # stretch's highest sample, so its peak is the peak over the phases.
    sampled_peak = max(result.server_peak_rss_by_phase.values())
    assert result.server_rss_listening_bytes <= sampled_peak
    assert sampled_peak <= result.server_peak_rss_bytes + HWM_LAG_BYTES
    assert max(rss for _, rss in result.rss_timeline) == sampled_peak
    times = [t for t, _ in result.rss_timeline]
    assert times == sorted(times) and len(set(times)) == len(times)
    phases = list(result.server_peak_rss_by_phase)
    order = ["waiting", "training", "evaluating", "finished"]
    assert "training" in phases and phases == sorted(phases, key=order.index)


def _report_rows(report: str) -> dict[int, dict[str, str]]:
    """The report's table: client count -> column header -> cell."""
    lines = [[c.strip() for c in line.strip("|").split("|")]
             for line in report.splitlines() if line.startswith("| ")]
    header, *body = lines
    return {int(row[0]): dict(zip(header, row, strict=True)) for row in body}


def test_outputs_merge_and_report(result: aggregator.BenchResult, tmp_path: Path) -> None:
    aggregator.write_outputs(tmp_path, [result], "test")
    bigger = aggregator.BenchResult(**{**result.__dict__, "clients": 2 * CLIENTS})
    entries = aggregator.write_outputs(tmp_path, [bigger, result], "test")
    document = json.loads((tmp_path / "results.json").read_text())
    assert [e["clients"] for e in document["runs"]] == [CLIENTS, 2 * CLIENTS] == [
        e["clients"] for e in entries]
    assert {"python", "torch", "websockets", "cpu_count"} <= set(document["environment"])
    assert aggregator.verdict(entries) == ("O(model)", 0.0)  # same peak at both counts
    rows = _report_rows((tmp_path / "report.md").read_text())
    assert set(rows) == {CLIENTS, 2 * CLIENTS}
    row = rows[CLIENTS]
    overhead = result.wire_uplink_bytes / result.payload_uplink_bytes - 1
    assert float(row["wire overhead up"].removesuffix("%")) == pytest.approx(100 * overhead,
                                                                            abs=0.005)
    assert float(row["uploads/s"]) == pytest.approx(result.uploads_per_second, abs=0.05)
    assert float(row["server peak RSS (MiB)"]) == pytest.approx(
        result.server_peak_rss_bytes / 2**20, abs=0.05)
    assert (tmp_path / "aggregator.png").stat().st_size > 0


@pytest.mark.parametrize("fraction", [0.04, 0.06])
def test_the_verdict_is_the_fitted_slope_against_one_update(
        result: aggregator.BenchResult, fraction: float) -> None:
    """Peak RSS that grows by ``fraction`` of an update per client: the least-squares slope
    recovers it, and the verdict turns at 5 %."""
    per_client = fraction * result.update_payload_bytes
    series = [{**result.__dict__, "clients": n,
               "server_peak_rss_bytes": result.server_peak_rss_bytes + round(per_client * n)}
              for n in (10, 100, 1000)]
    name, slope = aggregator.verdict(series)
    assert slope == pytest.approx(per_client, rel=1e-3)
    assert name == ("O(model)" if fraction < aggregator.O_MODEL_FRACTION else "O(clients)")
    assert aggregator.O_MODEL_FRACTION == 0.05
    report = aggregator.report(series, {}, ["test"])
    assert f"**{name}**" in report
