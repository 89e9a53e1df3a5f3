"""Rate limits on each client's link with ``tc tbf``, and a check that they hold.

Each direction is shaped where its packets leave: the downlink (server -> client) on the
root-namespace veth end, the uplink (client -> server) on the client's end inside its namespace.
:func:`verify` then pushes a short TCP transfer each way (about ``seconds`` at the profile's rate)
and measures the goodput; a figure outside ``±tolerance`` of the profile aborts the run, because a
field measurement on a link that is not what the profile says would be reported under the wrong
name. Goodput counts TCP payload only, so it sits a few percent under the shaped (L2) rate.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from lpfl.errors import LpflError
from lpfl.harness.field.netns import ClientLink
from lpfl.profiles.links import LinkProfile

log = logging.getLogger(__name__)


class ShapingError(LpflError):
    """A shaped link measured outside the tolerance of its profile."""


def _tc(netns: str | None, *args: str) -> None:
    argv = ["tc", *(("-n", netns) if netns else ()), *args]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise LpflError(f"`{' '.join(argv)}` failed: {done.stderr.strip()}")


def tbf_args(mbit: float) -> list[str]:
    """``tbf`` parameters for ``mbit``: a 5 ms burst (at least two full frames) and a queue of
    200 ms (at least 64 KiB), so TCP sees the rate, not drops from a tiny queue."""
    bytes_per_s = mbit * 1e6 / 8
    burst = max(int(bytes_per_s * 0.005), 2 * 1514)
    limit = max(int(bytes_per_s * 0.2), 65536)
    return ["tbf", "rate", f"{mbit * 1000:.0f}kbit", "burst", str(burst), "limit", str(limit)]


def shape(link: ClientLink, profile: LinkProfile) -> None:
    """Apply the profile's rates to one client's veth pair (replacing any earlier shaping)."""
    _tc(None, "qdisc", "replace", "dev", link.host_dev, "root", *tbf_args(profile.downlink_mbit))
    _tc(link.netns, "qdisc", "replace", "dev", link.client_dev, "root",
        *tbf_args(profile.uplink_mbit))
    log.info("%s: uplink %.2f Mbit/s, downlink %.2f Mbit/s", link.netns, profile.uplink_mbit,
             profile.downlink_mbit)


# Run inside the client's namespace: send N bytes to HOST:PORT, or receive them and print the
# goodput (bytes after the first chunk over the time from the first to the last chunk).
_PEER = """
import socket, sys, time
mode, host, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
s = socket.create_connection((host, port), timeout=60)
if mode == "send":
    s.sendall(bytes(n)); s.shutdown(socket.SHUT_WR); s.recv(1)
else:
    first = s.recv(65536); t0 = time.monotonic(); got = 0
    while chunk := s.recv(65536):
        got += len(chunk)
    print(got * 8 / (time.monotonic() - t0) / 1e6)
"""


@dataclass(frozen=True)
class Measured:
    """Goodput of one direction of one link, in Mbit/s, against the profile's rate."""

    direction: str
    mbit: float
    expected_mbit: float

    @property
    def ratio(self) -> float:
        return self.mbit / self.expected_mbit


def measure(link: ClientLink, direction: str, mbit: float, seconds: float = 2.0) -> float:
    """Goodput in Mbit/s of one TCP transfer of about ``seconds`` at ``mbit`` over the link."""
    nbytes = max(int(mbit * 1e6 / 8 * seconds), 131072)
    with socket.create_server((link.host_ip, 0)) as listener:
        listener.settimeout(60)
        port = listener.getsockname()[1]
        mode = "send" if direction == "up" else "recv"
        peer = subprocess.Popen(
            [*link.exec_prefix(), sys.executable, "-c", _PEER, mode, link.host_ip, str(port),
             str(nbytes)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(60)
                if direction == "up":
                    conn.recv(65536)
                    start, got = time.monotonic(), 0
                    while chunk := conn.recv(65536):
                        got += len(chunk)
                    result = got * 8 / (time.monotonic() - start) / 1e6
                    conn.sendall(b"k")
                else:
                    conn.sendall(bytes(nbytes))
                    conn.shutdown(socket.SHUT_WR)
            out, err = peer.communicate(timeout=60)
        finally:
            if peer.poll() is None:
                peer.kill()
                peer.wait()
    if peer.returncode != 0:
        raise LpflError(f"the rate check in {link.netns} failed: {err.strip()}")
    return result if direction == "up" else float(out.strip())


def verify(link: ClientLink, profile: LinkProfile, tolerance: float = 0.15,
           seconds: float = 2.0, attempts: int = 2) -> list[Measured]:
    """Measure both directions; raise :class:`ShapingError` with the figures if either is off
    by more than ``tolerance`` (the best of ``attempts`` counts: the host is shared)."""
    results = []
    for direction, mbit in (("up", profile.uplink_mbit), ("down", profile.downlink_mbit)):
        best = 0.0
        for _ in range(attempts):
            got = measure(link, direction, mbit, seconds)
            best = got if abs(got / mbit - 1) < abs(best / mbit - 1) else best
            if abs(best / mbit - 1) <= tolerance:
                break
        results.append(Measured(direction, best, mbit))
    bad = [m for m in results if abs(m.ratio - 1) > tolerance]
    for m in results:
        log.info("%s %s: measured %.3f Mbit/s for %.3f (%+.1f%%)", link.netns, m.direction,
                 m.mbit, m.expected_mbit, (m.ratio - 1) * 100)
    if bad:
        figures = "; ".join(f"{m.direction}link measured {m.mbit:.3f} Mbit/s, profile "
                            f"{profile.name} says {m.expected_mbit:.3f} ({m.ratio - 1:+.1%})"
                            for m in bad)
        raise ShapingError(f"{link.netns}: shaping is off by more than ±{tolerance:.0%}: "
                           f"{figures}")
    return results
