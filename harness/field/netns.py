"""Network namespaces joined to the root namespace by veth pairs, one per field client.

Every name a run creates starts with a prefix unique to that run (``lf`` + 5 hex digits), so
cleanup can find everything the run made, and only that, even after a crash half-way through
setup: :func:`cleanup` deletes the namespaces and host-side veth ends carrying the prefix and is
safe to call any number of times. :class:`Namespaces` is a context manager that also registers
the cleanup with :mod:`atexit`, for runs that die by an exception the context manager never sees.

Neither helps when the orchestrator is killed with SIGKILL. So before it makes anything, a run
records itself in ``STATE_DIR/<prefix>.json``: its own pid and start time, and later every process
it starts (the server, the clients). :func:`sweep` finds the records whose owner is gone, kills
what is left of that run (its recorded processes, anything still inside its namespaces or its
cgroups), deletes its namespaces, links and cgroups (:mod:`lpfl.harness.field.cpu_quota`) and
drops the record. Every run sweeps before it starts, and
``lpfl field --cleanup`` sweeps on demand. A record names a process by pid *and* start time, so a
pid reused by an unrelated process is never killed.

Client ``i`` gets namespace ``<prefix>-c<i>`` with veth end ``<prefix>c<i>`` at ``10.X.i.2/24``;
its peer ``<prefix>h<i>`` in the root namespace holds ``10.X.i.1/24``, where the client reaches
the server (through the delay proxy). ``X`` is picked among subnets not already on this host.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

from lpfl.errors import LpflError
from lpfl.harness.field.cpu_quota import remove_groups
from lpfl.results import write_json_atomic

log = logging.getLogger(__name__)

STATE_DIR = Path("/run/lpfl-field")
"""Where live runs record themselves (tmpfs: gone after a reboot, like the namespaces)."""


class NotPermitted(LpflError):
    """This host cannot make namespaces: not root, or ``ip``/``tc`` are missing."""


def missing_privileges() -> str:
    """Why namespaces cannot be made here, or ``""`` when they can."""
    if os.geteuid() != 0:
        return "lpfl field needs root (network namespaces, veth pairs and tc); run it with sudo"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return (f"lpfl field needs {' and '.join(missing)} (apt-get install iproute2)")
    return ""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run one ``ip`` command; a failure raises with its stderr."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise LpflError(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")
    return done


@dataclass(frozen=True)
class ClientLink:
    """One client's namespace and the two ends of its veth pair."""

    index: int
    netns: str
    host_dev: str
    client_dev: str
    host_ip: str
    client_ip: str

    def exec_prefix(self) -> list[str]:
        """The argv prefix that runs a command inside this client's namespace."""
        return ["ip", "netns", "exec", self.netns]


def new_prefix() -> str:
    """A name prefix unique to one run (short: interface names hold 15 characters)."""
    return "lf" + secrets.token_hex(3)[:5]


def _used_subnets() -> set[int]:
    text = ip("-o", "-4", "addr", "show").stdout
    return {int(word.split(".")[1]) for word in text.split()
            if word.startswith("10.") and word.count(".") == 3}


def _free_subnet() -> int:
    used = _used_subnets()
    for octet in range(200, 255):
        if octet not in used:
            return octet
    raise LpflError("no free 10.X.0.0/16 subnet among 10.200-10.254 for the field links")


def list_owned(prefix: str) -> tuple[list[str], list[str]]:
    """The namespaces and root-namespace links whose names start with ``prefix``."""
    netns = [line.split()[0] for line in ip("netns", "list").stdout.splitlines()
             if line.split() and line.split()[0].startswith(prefix)]
    links = []
    for line in ip("-o", "link", "show").stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if name.startswith(prefix):
            links.append(name)
    return netns, links


def cleanup(prefix: str) -> None:
    """Delete every namespace and link whose name starts with ``prefix``; idempotent."""
    if not prefix.startswith("lf") or len(prefix) < 4:
        raise ValueError(f"refusing to clean up the broad prefix {prefix!r}")
    netns, links = list_owned(prefix)
    for name in netns:  # deleting a namespace deletes the veth end inside it, and so its peer
        ip("netns", "delete", name, check=False)
    for name in links:
        ip("link", "delete", name, check=False)
    left = list_owned(prefix)
    if any(left):
        log.warning("could not remove %s", left)


def create_links(prefix: str, count: int) -> list[ClientLink]:
    """Make ``count`` namespaces with veth pairs and addresses; cleans up if any step fails."""
    subnet = _free_subnet()
    links = []
    try:
        for i in range(count):
            link = ClientLink(i, f"{prefix}-c{i}", f"{prefix}h{i}", f"{prefix}c{i}",
                              f"10.{subnet}.{i}.1", f"10.{subnet}.{i}.2")
            ip("netns", "add", link.netns)
            ip("link", "add", link.host_dev, "type", "veth", "peer", "name", link.client_dev)
            ip("link", "set", link.client_dev, "netns", link.netns)
            ip("addr", "add", f"{link.host_ip}/24", "dev", link.host_dev)
            ip("link", "set", link.host_dev, "up")
            ip("-n", link.netns, "addr", "add", f"{link.client_ip}/24", "dev", link.client_dev)
            ip("-n", link.netns, "link", "set", link.client_dev, "up")
            ip("-n", link.netns, "link", "set", "lo", "up")
            links.append(link)
    except BaseException:
        cleanup(prefix)
        raise
    log.info("made %d namespaces %s-c* on 10.%d.0.0/16", count, prefix, subnet)
    return links


@dataclass(frozen=True)
class ProcessId:
    """A process as the kernel knows it: the pid and its start time (clock ticks after boot),
    which together never name two processes."""

    pid: int
    start: int

    @classmethod
    def of(cls, pid: int) -> ProcessId | None:
        """The running process ``pid``; None when it is gone or a zombie."""
        try:
            stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
        except OSError:
            return None
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state is field 3
        if fields[0] in ("Z", "X"):
            return None
        return cls(pid, int(fields[19]))  # field 22: starttime

    def alive(self) -> bool:
        """Whether this very process still runs (not another that reuses the pid)."""
        return ProcessId.of(self.pid) == self


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _netns_pids(name: str) -> list[int]:
    return [int(word) for word in ip("netns", "pids", name, check=False).stdout.split()]


def sweep(state_dir: Path = STATE_DIR) -> list[str]:
    """Remove everything left by runs whose orchestrator is gone; returns their prefixes.

    Runs whose owner still runs are left alone, so concurrent field runs do not disturb each
    other. Records that cannot be read are reported and kept.
    """
    removed = []
    for path in sorted(state_dir.glob("lf*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            owner = ProcessId(**record["owner"])
            processes = [ProcessId(**p) for p in record["processes"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("cannot read the field run record %s (%s); remove it by hand", path, exc)
            continue
        if owner.alive():
            continue
        prefix = path.stem
        netns, _ = list_owned(prefix)
        for pid in [p.pid for p in processes if p.alive()]:
            _kill(pid)
        for name in netns:
            for pid in _netns_pids(name):
                _kill(pid)
        cleanup(prefix)
        groups = remove_groups(prefix)
        path.unlink(missing_ok=True)
        log.warning("removed what field run %s (pid %d, killed) left: namespaces %s, %d "
                    "processes, cgroups %s", prefix, owner.pid, netns or "none",
                    len(processes), [str(g) for g in groups] or "none")
        removed.append(prefix)
    return removed


class Namespaces:
    """``with Namespaces(n) as links:`` — n client namespaces, removed on exit (and at exit).

    On entry it first removes what killed runs left (:func:`sweep`), then records this run in
    ``state_dir``; :meth:`track` adds the processes the run starts to that record.
    """

    def __init__(self, count: int, prefix: str | None = None,
                 state_dir: Path = STATE_DIR) -> None:
        reason = missing_privileges()
        if reason:
            raise NotPermitted(reason)
        self.count = count
        self.prefix = prefix or new_prefix()
        self.links: list[ClientLink] = []
        self.record = state_dir / f"{self.prefix}.json"
        owner = ProcessId.of(os.getpid())
        if owner is None:
            raise LpflError("cannot read /proc/self/stat: lpfl field needs Linux's /proc")
        self.owner = owner
        self.processes: list[ProcessId] = []

    def track(self, pid: int) -> None:
        """Record a process this run started, so a sweep can kill it if the run is killed."""
        process = ProcessId.of(pid)
        if process is not None:
            self.processes.append(process)
            self._write()

    def _write(self) -> None:
        write_json_atomic(self.record, {"owner": asdict(self.owner),
                                        "processes": [asdict(p) for p in self.processes]})

    def _release(self) -> None:
        cleanup(self.prefix)
        self.record.unlink(missing_ok=True)

    def __enter__(self) -> list[ClientLink]:
        sweep(self.record.parent)
        self.record.parent.mkdir(parents=True, exist_ok=True)
        self._write()
        atexit.register(self._release)
        try:
            self.links = create_links(self.prefix, self.count)
        except BaseException:
            self._release()
            atexit.unregister(self._release)
            raise
        return self.links

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._release()
        atexit.unregister(self._release)
