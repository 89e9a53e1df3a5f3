"""The delay proxy adds the configured RTT, keeps byte order, does not throttle, and times
bursts; plus the pure parts of ``lpfl field`` (profiles, budgets, burst matching). No root."""

from __future__ import annotations

import asyncio
import itertools
import os
import statistics
import time

import pytest

from lpfl.errors import ConfigError
from lpfl.harness.field.delay_proxy import Chunk, DelayProxy
from lpfl.harness.field.report import time_to_accuracy
from lpfl.harness.field.run import round_budget, transfer_seconds
from lpfl.profiles.links import LINKS_FILE, LinkProfile, load_profiles


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _through_proxy(delay_s: float) -> tuple[list[float], bytes, bytes, float, DelayProxy]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    proxy = DelayProxy("127.0.0.1", "127.0.0.1", server.sockets[0].getsockname()[1], delay_s)
    reader, writer = await asyncio.open_connection("127.0.0.1", await proxy.start())
    rtts = []
    for _ in range(8):
        started = time.monotonic()
        writer.write(b"x")
        await writer.drain()
        await reader.readexactly(1)
        rtts.append(time.monotonic() - started)
    await asyncio.sleep(0.5)  # a pause, so the blob is a burst of its own
    blob = os.urandom(8 << 20)
    started = time.monotonic()
    writer.write(blob)
    echoed = await reader.readexactly(len(blob))
    seconds = time.monotonic() - started
    writer.close()
    await proxy.close()
    server.close()
    return rtts, blob, echoed, seconds, proxy


def test_the_proxy_adds_the_configured_rtt_keeps_order_and_does_not_throttle() -> None:
    rtts, blob, echoed, seconds, proxy = asyncio.run(_through_proxy(0.025))
    rtt_ms = statistics.median(rtts) * 1000
    assert 50 <= rtt_ms <= 50 + 25, f"RTT {rtt_ms:.1f} ms for 25 ms each way"
    assert echoed == blob
    # 8 MiB up and back through the proxy: far faster than any link profile (>= 50 Mbit/s).
    assert len(blob) * 8 / (seconds - 0.05) / 1e6 > 50, f"{seconds:.2f} s for 8 MiB"
    for direction in ("up", "down"):  # every byte, in order, timed
        chunks = proxy.chunks[direction]
        assert sum(c.nbytes for c in chunks) == 8 + len(blob)
        assert all(a.start <= b.start for a, b in itertools.pairwise(chunks))
        took = transfer_seconds(chunks, (8, 8 + len(blob)), len(blob))
        assert took is not None and 0 < took <= seconds


def test_a_transfer_is_timed_by_its_bytes_within_the_round_window() -> None:
    chunks = [Chunk(0.0, 0.0, 100),  # round 1: a handshake,
              Chunk(5.0, 5.0, 10), Chunk(5.5, 5.5, 500), Chunk(6.0, 6.0, 500),  # ack + update,
              Chunk(30.0, 30.0, 6),  # a ping much later,
              Chunk(40.0, 40.0, 1000)]  # round 2: the next update
    assert transfer_seconds(chunks, (0, 1116), 1000) == pytest.approx(0.5)
    assert transfer_seconds(chunks, (1116, 2116), 1000) == pytest.approx(0.0)
    assert transfer_seconds(chunks, (2116, 2116), 0) is None
    assert transfer_seconds(chunks, (0, 1116), 2000) is None


def test_link_profiles_load_with_their_sources() -> None:
    profiles = {p.name: p for p in load_profiles(LINKS_FILE)}
    assert {"lte", "3g", "wifi"} <= set(profiles)
    assert all(p.source for p in profiles.values())
    assert profiles["3g"].uplink_mbit < 1 < profiles["lte"].uplink_mbit
    assert profiles["lte"].seconds_for(625_000, "up") == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="no link profile named 5g"):
        load_profiles(LINKS_FILE, ["5g"])
    with pytest.raises(ConfigError, match="source"):
        LinkProfile("x", 1.0, 1.0, 10.0, " ")


def test_fp_fl_rounds_are_bounded_by_the_time_budget() -> None:
    assert round_budget("lp-fl", 5, 1e6, 10).measured == 5
    assert round_budget("fp-fl", 5, 10.0, 1e9).measured == 5
    bounded = round_budget("fp-fl", 5, 10.0, 25.0)
    assert (bounded.measured, bounded.requested) == (2, 5) and "extrapolated" in bounded.note
    assert round_budget("fp-fl", 5, 10.0, 5.0).measured == 0


def test_time_to_accuracy_leaves_out_the_server_evaluation() -> None:
    run = {"rounds": [{"seconds": 10.0, "eval_seconds": 4.0, "accuracy": 0.5},
                      {"seconds": 12.0, "eval_seconds": 4.0, "accuracy": 0.8},
                      {"seconds": 9.0, "accuracy": 0.9}]}  # recorded before eval_seconds
    assert time_to_accuracy(run, 0.8) == 6.0 + 8.0
    assert time_to_accuracy(run, 0.85) == 6.0 + 8.0 + 9.0
    assert time_to_accuracy(run, 0.95) is None
