"""Device speed and memory for field clients: one cgroup per client with a CPU quota and a
memory limit.

A client's group is ``<prefix>-c<i>`` (the run's name prefix, as for its namespaces), made
under the orchestrator's own cgroup in each hierarchy, so a host's or container's limits still
hold above it. cgroup v1 (separate ``cpu`` and ``memory`` hierarchies) sets
``cpu.cfs_quota_us`` over ``cpu.cfs_period_us`` and ``memory.limit_in_bytes``; cgroup v2 (one
unified hierarchy with the ``cpu`` controller) sets ``cpu.max`` and ``memory.max``. A quota of
0.25 lets the client's threads together use a quarter of one CPU in every period: a CPU-bound
client runs about four times slower.

:class:`ClientGroups` makes the groups and removes them on exit (and at exit); a client joins
its group before it runs anything (:meth:`ClientGroup.exec_prefix`). After a ``kill -9`` of the
orchestrator, :func:`remove_groups` — called by the field sweep — kills what is left in a dead
run's groups and removes them.
"""

from __future__ import annotations

import atexit
import contextlib
import enum
import logging
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from lpfl.errors import LpflError

log = logging.getLogger(__name__)

PERIOD_US = 20_000
"""The CFS period every group uses: quotas are fractions of it. Shorter than the kernel's
100 ms default so that a client's short bursts of compute (a small model's training step) are
throttled too, not run at full speed within one period's allowance; 20 ms keeps the smallest
quota (0.05) at the kernel's 1 ms minimum."""
MIN_QUOTA_US = 1_000
"""The kernel refuses quotas under 1 ms."""


class CgroupVersion(enum.Enum):
    V1 = "v1"
    V2 = "v2"


@dataclass(frozen=True)
class CgroupLayout:
    """Where this process's cgroups are: the folders client groups are made in."""

    version: CgroupVersion
    cpu: Path
    memory: Path | None
    """v1: the memory hierarchy's folder (None when not mounted); v2: None (same as ``cpu``)."""

    def bases(self) -> list[Path]:
        """Every folder that holds client groups."""
        return [self.cpu] + ([self.memory] if self.memory is not None else [])


def _mounts(mounts: Path) -> list[tuple[str, str, list[str]]]:
    rows = []
    for line in mounts.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) >= 4:
            rows.append((parts[2], parts[1], parts[3].split(",")))
    return rows


def detect(mounts: Path = Path("/proc/self/mounts"),
           own: Path = Path("/proc/self/cgroup")) -> CgroupLayout | None:
    """This host's cgroup layout: v1 when a ``cpu`` hierarchy is mounted, else v2 when the
    unified hierarchy offers the ``cpu`` controller here; None without either."""
    try:
        table = _mounts(mounts)
        memberships = [line.split(":", 2) for line in own.read_text(encoding="utf-8").split("\n")
                       if line.count(":") >= 2]
    except OSError:
        return None
    paths = {controller: path.lstrip("/") for _, controllers, path in memberships
             for controller in controllers.split(",")}

    def v1_base(controller: str) -> Path | None:
        for fstype, point, options in table:
            if fstype == "cgroup" and controller in options and controller in paths:
                return Path(point) / paths[controller]
        return None

    cpu = v1_base("cpu")
    if cpu is not None:
        return CgroupLayout(CgroupVersion.V1, cpu, v1_base("memory"))
    unified = [point for fstype, point, _ in table if fstype == "cgroup2"]
    own_v2 = next((path.lstrip("/") for hid, controllers, path in memberships
                   if hid == "0" and controllers == ""), None)
    if unified and own_v2 is not None:
        base = Path(unified[0]) / own_v2
        with contextlib.suppress(OSError):
            if "cpu" in (base / "cgroup.controllers").read_text(encoding="utf-8").split():
                return CgroupLayout(CgroupVersion.V2, base, None)
    return None


def missing_cgroups(layout: CgroupLayout | None) -> str:
    """Why client groups cannot be made here, or ``""`` when they can."""
    if layout is None:
        return "no cgroup cpu controller here (neither a v1 cpu hierarchy nor cgroup v2 with cpu)"
    if os.geteuid() != 0:
        return "making cgroups needs root"
    return ""


@dataclass(frozen=True)
class Limits:
    """What one client's group allows: CPUs (None: no quota) and memory (None: no limit)."""

    cpu_quota: float | None = None
    memory_mb: int | None = None

    def __post_init__(self) -> None:
        if self.cpu_quota is not None and not 0 < self.cpu_quota <= 1024:
            raise ValueError(f"cpu_quota={self.cpu_quota} must be in (0, 1024] CPUs")
        if self.memory_mb is not None and self.memory_mb < 1:
            raise ValueError(f"memory_mb={self.memory_mb} must be >= 1")


@dataclass(frozen=True)
class ClientGroup:
    """One client's group: its folder in each hierarchy and the limits written there."""

    name: str
    folders: tuple[Path, ...]
    limits: Limits

    def exec_prefix(self) -> list[str]:
        """The argv prefix that moves a command into this group before it runs (a shell that
        writes its own pid to each ``cgroup.procs``, then execs the command)."""
        writes = " && ".join(f'echo $$ > "${i + 1}"' for i in range(len(self.folders)))
        script = f'{writes} && shift {len(self.folders)} && exec "$@"'
        return ["sh", "-c", script, "sh", *(str(f / "cgroup.procs") for f in self.folders)]


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value, encoding="utf-8")
    except OSError as exc:
        raise LpflError(f"cannot write {value!r} to {path}: {exc}") from None


def _set_limits(layout: CgroupLayout, folders: Sequence[Path], limits: Limits) -> None:
    cpu = folders[0]
    memory = folders[-1]  # v1: the memory folder when mounted; v2: the one folder
    if layout.version is CgroupVersion.V1:
        if limits.cpu_quota is not None:
            _write(cpu / "cpu.cfs_period_us", str(PERIOD_US))
            _write(cpu / "cpu.cfs_quota_us",
                   str(max(round(limits.cpu_quota * PERIOD_US), MIN_QUOTA_US)))
        if limits.memory_mb is not None and layout.memory is not None:
            _write(memory / "memory.limit_in_bytes", str(limits.memory_mb * 2**20))
        return
    if limits.cpu_quota is not None:
        _write(cpu / "cpu.max", f"{max(round(limits.cpu_quota * PERIOD_US), MIN_QUOTA_US)} "
                                f"{PERIOD_US}")
    if limits.memory_mb is not None:
        _write(cpu / "memory.max", str(limits.memory_mb * 2**20))


def _enable_v2_controllers(base: Path) -> None:
    """Let child groups of ``base`` use cpu (and memory when offered)."""
    offered = (base / "cgroup.controllers").read_text(encoding="utf-8").split()
    wanted = [c for c in ("cpu", "memory") if c in offered]
    enabled = (base / "cgroup.subtree_control").read_text(encoding="utf-8").split()
    missing = [c for c in wanted if c not in enabled]
    if missing:
        _write(base / "cgroup.subtree_control", " ".join(f"+{c}" for c in missing))


def _group_pids(folder: Path) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(p) for p in (folder / "cgroup.procs").read_text(encoding="utf-8").split()]
    return []


def owned_groups(prefix: str, layout: CgroupLayout | None) -> list[Path]:
    """The group folders of the run ``prefix`` that exist now."""
    if layout is None:
        return []
    return sorted(p for base in layout.bases() for p in base.glob(f"{prefix}-c*") if p.is_dir())


def remove_groups(prefix: str, layout: CgroupLayout | None = None,
                  timeout_s: float = 5.0) -> list[Path]:
    """Kill every process in the run's groups and remove the groups; returns those removed.

    Idempotent; a group that will not go (a process that does not die) is reported.
    """
    if not prefix.startswith("lf") or len(prefix) < 4:
        raise ValueError(f"refusing to remove the groups of the broad prefix {prefix!r}")
    layout = layout if layout is not None else detect()
    folders = owned_groups(prefix, layout)
    removed = []
    for folder in folders:
        deadline = time.monotonic() + timeout_s
        while True:
            for pid in _group_pids(folder):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            try:
                folder.rmdir()
                removed.append(folder)
                break
            except FileNotFoundError:
                break
            except OSError as exc:  # busy until the killed processes have left the group
                if time.monotonic() > deadline:
                    log.warning("could not remove the cgroup %s: %s", folder, exc)
                    break
                time.sleep(0.05)
    return removed


class ClientGroups:
    """``with ClientGroups(prefix, limits) as groups:`` — group ``<prefix>-c<i>`` for each
    :class:`Limits`, removed on exit (and at exit)."""

    def __init__(self, prefix: str, limits: Sequence[Limits],
                 layout: CgroupLayout | None = None) -> None:
        self.layout = layout if layout is not None else detect()
        reason = missing_cgroups(self.layout)
        if reason:
            raise LpflError(f"cannot emulate device speed: {reason}")
        self.prefix = prefix
        self.limits = list(limits)

    def _release(self) -> None:
        remove_groups(self.prefix, self.layout)

    def __enter__(self) -> list[ClientGroup]:
        assert self.layout is not None  # checked in __init__
        atexit.register(self._release)
        groups = []
        try:
            if self.layout.version is CgroupVersion.V2:
                _enable_v2_controllers(self.layout.cpu)
            for i, limits in enumerate(self.limits):
                name = f"{self.prefix}-c{i}"
                folders = tuple(base / name for base in self.layout.bases())
                for folder in folders:
                    folder.mkdir()
                _set_limits(self.layout, folders, limits)
                groups.append(ClientGroup(name, folders, limits))
        except BaseException:
            self._release()
            atexit.unregister(self._release)
            raise
        return groups

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._release()
        atexit.unregister(self._release)
