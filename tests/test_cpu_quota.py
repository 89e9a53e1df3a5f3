"""Client cgroups really slow a process down, go away on exit, and are swept after the process
that made them is killed with SIGKILL."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lpfl.harness.field.cpu_quota import (
    CgroupLayout,
    CgroupVersion,
    ClientGroups,
    Limits,
    detect,
    missing_cgroups,
    owned_groups,
)
from lpfl.harness.field.netns import ProcessId, missing_privileges, new_prefix, sweep

LAYOUT = detect()
needs_cgroups = pytest.mark.skipif(bool(missing_cgroups(LAYOUT)),
                                   reason=missing_cgroups(LAYOUT) or "cgroups available")

LOOP = """
import time
start, cpu = time.perf_counter(), time.process_time()
total = 0
for i in range(6_000_000):
    total += i * i
print(time.perf_counter() - start, time.process_time() - cpu)
"""
"""About half a second of pure-Python work: its wall and CPU seconds, timed inside the process
(without its start-up)."""


def _loop_seconds(prefix: list[str]) -> tuple[float, float]:
    done = subprocess.run([*prefix, sys.executable, "-c", LOOP], capture_output=True, text=True,
                          check=True, timeout=60)
    wall, cpu = (float(x) for x in done.stdout.split())
    return wall, cpu


@needs_cgroups
def test_a_quarter_cpu_quota_runs_a_cpu_loop_about_four_times_slower() -> None:
    """The quota'd loop gets at most a quarter of a CPU, so it is slower than the free loop by
    the free loop's CPU share over 0.25: about 4x on a quiet machine, less when other work
    already slows the free loop (the ratio is what the test checks, never seconds)."""
    prefix = new_prefix()
    with ClientGroups(prefix, [Limits(cpu_quota=0.25, memory_mb=256)]) as groups:
        assert owned_groups(prefix, LAYOUT)
        free_wall, free_cpu = _loop_seconds([])
        wall, cpu = _loop_seconds(groups[0].exec_prefix())
    shown = (f"free {free_wall:.2f} s ({free_cpu:.2f} s CPU), at 25 % {wall:.2f} s "
             f"({cpu:.2f} s CPU)")
    assert cpu / wall <= 0.25 * 1.2, shown
    expected = (free_cpu / free_wall) / 0.25
    assert 0.8 * expected <= wall / free_wall <= 2.5 * max(expected, 4.0), shown
    assert owned_groups(prefix, LAYOUT) == [], "the groups outlived their context"


CHILD = """
import subprocess, sys, time
from pathlib import Path
from lpfl.harness.field.cpu_quota import ClientGroups, Limits
from lpfl.harness.field.netns import Namespaces

namespaces = Namespaces(0, state_dir=Path(sys.argv[1]))
with namespaces, ClientGroups(namespaces.prefix, [Limits(0.5, 256), Limits(None, None)]) as gs:
    sleeper = subprocess.Popen([*gs[0].exec_prefix(), "sleep", "300"])
    print(namespaces.prefix, sleeper.pid, flush=True)
    time.sleep(300)
"""


@needs_cgroups
@pytest.mark.skipif(bool(missing_privileges()), reason=missing_privileges() or "root")
def test_the_sweep_removes_the_groups_of_a_killed_run(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        prefix, pid = child.stdout.readline().split()
        sleeper = ProcessId.of(int(pid))
        assert sleeper is not None
        made = owned_groups(prefix, LAYOUT)
        assert len(made) == 2 * len(LAYOUT.bases() if LAYOUT else [])
        deadline = time.monotonic() + 10  # the sleeper joins its group as it starts
        while not any(pid in (g / "cgroup.procs").read_text().split() for g in made):
            assert time.monotonic() < deadline, "the sleeper never joined its group"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert owned_groups(prefix, LAYOUT) == made, "SIGKILL left nothing to sweep"
    finally:
        child.kill()
        child.wait()
        removed = sweep(tmp_path)
    assert removed == [prefix]
    assert owned_groups(prefix, LAYOUT) == []
    assert not sleeper.alive(), "the process inside the group survived the sweep"
    assert list(tmp_path.glob("lf*.json")) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="ClientGroups needs root")
def test_cgroup_v2_limits_are_written_as_cpu_max_and_memory_max(tmp_path: Path) -> None:
    base = tmp_path / "unified"
    base.mkdir()
    (base / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (base / "cgroup.subtree_control").write_text("\n")
    groups = ClientGroups("lfabcde", [Limits(0.25, 512)],
                          CgroupLayout(CgroupVersion.V2, base, None))
    [group] = groups.__enter__()
    try:
        folder = base / "lfabcde-c0"
        assert group.folders == (folder,)
        assert (folder / "cpu.max").read_text() == "5000 20000"
        assert (folder / "memory.max").read_text() == str(512 * 2**20)
        assert (base / "cgroup.subtree_control").read_text() == "+cpu +memory"
    finally:
        shutil.rmtree(base / "lfabcde-c0")  # a real cgroup folder has no files to delete
        groups.__exit__(None, None, None)
