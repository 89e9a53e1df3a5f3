"""Network namespaces joined to the root namespace by veth pairs, one per field client.

Every name a run creates starts with a prefix unique to that run (``lf`` + 5 hex digits), so
cleanup can find everything the run made, and only that, even after a crash half-way through
setup: :func:`cleanup` deletes the namespaces and host-side veth ends carrying the prefix and is
safe to call any number of times. :class:`Namespaces` is a context manager that also registers
the cleanup with :mod:`atexit`, for runs that die by an exception the context manager never sees.

Client ``i`` gets namespace ``<prefix>-c<i>`` with veth end ``<prefix>c<i>`` at ``10.X.i.2/24``;
its peer ``<prefix>h<i>`` in the root namespace holds ``10.X.i.1/24``, where the client reaches
the server (through the delay proxy). ``X`` is picked among subnets not already on this host.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from types import TracebackType

from lpfl.errors import LpflError

log = logging.getLogger(__name__)


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


class Namespaces:
    """``with Namespaces(n) as links:`` — n client namespaces, removed on exit (and at exit)."""

    def __init__(self, count: int, prefix: str | None = None) -> None:
        reason = missing_privileges()
        if reason:
            raise NotPermitted(reason)
        self.count = count
        self.prefix = prefix or new_prefix()
        self.links: list[ClientLink] = []
        self._at_exit = functools.partial(cleanup, self.prefix)

    def __enter__(self) -> list[ClientLink]:
        atexit.register(self._at_exit)
        self.links = create_links(self.prefix, self.count)
        return self.links

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        cleanup(self.prefix)
        atexit.unregister(self._at_exit)
