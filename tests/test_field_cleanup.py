"""What a field run killed with SIGKILL leaves behind (namespaces, veth links, the server and
client processes) is removed by ``lpfl field --cleanup`` and by the next run, and only that."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lpfl.harness.field.netns import (
    STATE_DIR,
    Namespaces,
    ProcessId,
    list_owned,
    missing_privileges,
    sweep,
)
from tests.test_launch import RUN

pytestmark = pytest.mark.skipif(bool(missing_privileges()),
                                reason=missing_privileges() or "root and iproute2 present")

CLI = [sys.executable, "-m", "lpfl.cli"]


def _host_state() -> tuple[str, str]:
    """What ``ip netns list`` and ``ip link`` show."""
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    return netns.stdout, links.stdout


def _record_of(owner: int, processes: int, timeout_s: float,
               orchestrator: subprocess.Popen[bytes]) -> tuple[Path, dict[str, Any]]:
    """The run record of ``owner`` once it lists ``processes`` processes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert orchestrator.poll() is None, "the field run ended before it could be killed"
        for path in STATE_DIR.glob("lf*.json"):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if record["owner"]["pid"] == owner and len(record["processes"]) >= processes:
                return path, record
        time.sleep(0.2)
    raise AssertionError(f"no record of {processes} processes from pid {owner} in {timeout_s} s")


def test_field_cleanup_removes_what_a_killed_orchestrator_left(tmp_path: Path) -> None:
    run_file = tmp_path / "run.toml"
    run_file.write_text(RUN)
    with (tmp_path / "orchestrator.log").open("wb") as log:
        orchestrator = subprocess.Popen(
            [*CLI, "field", "--config", str(run_file), "--profiles", "lte", "--clients", "2",
             "--rounds", "50", "--methods", "lp-fl", "--out", str(tmp_path / "field"),
             "--verify-seconds", "0.5"], stdout=log, stderr=subprocess.STDOUT)
    try:  # the server and both clients are up: kill the orchestrator mid-run
        path, record = _record_of(orchestrator.pid, 3, 240, orchestrator)
    finally:
        orchestrator.kill()
        orchestrator.wait()
    prefix = path.stem
    started = [ProcessId(**p) for p in record["processes"]]
    netns, links = list_owned(prefix)
    assert len(netns) == 2 and len(links) == 2, "SIGKILL ran no cleanup: all should be there"
    assert all(p.alive() for p in started), "the server and clients outlive their orchestrator"

    done = subprocess.run([*CLI, "field", "--cleanup"], capture_output=True, text=True,
                          check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    assert prefix in done.stdout
    netns_listing, link_listing = _host_state()
    assert prefix not in netns_listing and prefix not in link_listing
    assert not any(p.alive() for p in started)
    assert not path.exists()


# Made and recorded by a process that is then killed: a namespace with a process inside.
_VICTIM = """
import subprocess, sys, time
from lpfl.harness.field.netns import Namespaces
ns = Namespaces(1)
(link,) = ns.__enter__()
inside = subprocess.Popen([*link.exec_prefix(), "sleep", "600"])
ns.track(inside.pid)
print(ns.prefix, inside.pid, flush=True)
time.sleep(600)
"""


def test_the_next_run_sweeps_a_killed_run_and_spares_live_ones() -> None:
    victim = subprocess.Popen([sys.executable, "-c", _VICTIM], stdout=subprocess.PIPE, text=True)
    assert victim.stdout is not None
    prefix, pid = victim.stdout.readline().split()
    inside = ProcessId.of(int(pid))
    assert inside is not None and list_owned(prefix)[0] == [f"{prefix}-c0"]
    victim.kill()
    victim.wait()
    assert list_owned(prefix)[0] and inside.alive()

    live = Namespaces(1)
    with live:  # entering sweeps the killed run, and the sweep spares this live one
        assert list_owned(prefix) == ([], [])
        assert not inside.alive()
        assert not (STATE_DIR / f"{prefix}.json").exists()
        assert prefix not in sweep()
        assert len(list_owned(live.prefix)[0]) == 1 and live.record.exists()
    assert list_owned(live.prefix) == ([], []) and not live.record.exists()
