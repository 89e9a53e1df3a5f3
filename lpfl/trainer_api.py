"""What the edge client needs from a trainer: the interface the LP-FL trainer implements.

The client (:mod:`lpfl.edge_client.connection`) knows nothing about models: it hands each task's
global state and settings to a :class:`Trainer` and ships back what it returns. Anything with the
two methods below works, which is how tests run whole federations with a few lines of torch.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
from collections.abc import Mapping
from typing import Any, Protocol

import torch


class TrainResult(Protocol):
    """One round's result; :class:`lpfl.strategy.ClientUpdate` is one."""

    @property
    def state(self) -> Mapping[str, torch.Tensor]:
        """The trained state: the same names and shapes as the global state it started from."""
        ...

    @property
    def num_examples(self) -> int:
        """How many examples it trained on (>= 1): its weight in the average."""
        ...

    @property
    def metrics(self) -> Mapping[str, float]:
        """Finite numbers such as ``train_loss`` and ``soft_labels``; the client adds
        ``compute_seconds`` if absent."""
        ...


class Trainer(Protocol):
    """Trains one client's share of each round."""

    def capabilities(self) -> dict[str, Any]:
        """What the device runs: ``backend``, ``cpu_arch``, ``memory_bytes``, ``runtime`` (see
        :func:`device_capabilities`), plus any plain JSON extras."""
        ...

    def train_round(
        self, round_number: int, global_state: dict[str, torch.Tensor], settings: dict[str, Any]
    ) -> TrainResult:
        """Train from ``global_state`` with the round's ``settings``; may take minutes (it runs in
        a worker thread, so the connection stays alive). Raising reports a failed round to the
        server; the client keeps going."""
        ...


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far: the figure a device's memory budget is held
    against. Linux's ``VmHWM`` is used where there is one: ``ru_maxrss`` survives ``exec``, so a
    child started from a big parent would report the parent's peak."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return int(peak if sys.platform == "darwin" else peak * 1024)


INT8_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8",  # x86
                 "asimddp", "i8mm", "sve")  # ARM: sdot, int8 matrix multiply, SVE
"""CPU features that decide how fast int8 / 4-bit kernels run (XNNPACK picks its kernels by
them): the same program can be several times faster on a CPU with a dot-product instruction."""


def cpu_features() -> list[str]:
    """Which of :data:`INT8_FEATURES` this CPU has (from ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            flags: set[str] = set()
            for line in info:
                if line.lower().startswith(("flags", "features")):
                    flags.update(line.split(":", 1)[1].split())
    except OSError:
        return []
    return [f for f in INT8_FEATURES if f in flags]


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            for line in info:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_capabilities(backend: str, **runtime: str) -> dict[str, Any]:
    """This machine's capabilities for a hello: ``backend``, CPU architecture and int8-relevant
    features, physical memory, the process's peak memory so far (``peak_rss_bytes``: call it
    once the model is loaded), and the Python and torch versions plus any ``runtime`` versions
    given."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = 0
    versions = {"python": platform.python_version(), "torch": torch.__version__, **runtime}
    return {"backend": backend, "cpu_arch": platform.machine() or sys.platform,
            "cpu_features": cpu_features(), "memory_bytes": max(int(memory), 0),
            "peak_rss_bytes": peak_rss_bytes(), "runtime": versions}
