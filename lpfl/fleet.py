"""A fleet: the mix of devices and links ``lpfl field`` runs its clients on.

A run file describes it in a ``[field.fleet]`` table, read only by ``lpfl field``::

    [field.fleet]
    name = "mostly-lte"
    seed = 0

    [[field.fleet.groups]]
    count = 4
    device = "phone-midrange"          # a shipped device profile, or a profile file
    links = { lte = 0.75, 3g = 0.25 }  # link profiles by proportion (they sum to 1)

    [[field.fleet.groups]]
    count = 1
    device = "jetson-orin-nano"
    links = { wifi = 1.0 }

:meth:`Fleet.assign` expands it into one :class:`ClientAssignment` per client: each group's
``count`` is split over its links by largest remainder (so 4 clients at 0.75/0.25 are 3 and 1),
and which of the group's clients gets which link is drawn with ``seed``. The same fleet and seed
always give the same assignment. Link names are checked against ``links_file`` (empty: the
link profiles lpfl ships), device names against the shipped device profiles.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from lpfl.config import build_section, read_toml
from lpfl.errors import ConfigError
from lpfl.profiles.devices import profile_path, shipped_device_names
from lpfl.profiles.links import LINKS_FILE, load_profiles

PROPORTION_TOLERANCE = 1e-6
"""How far a group's link proportions may sum from 1 (rounding in a TOML file)."""


@dataclass(frozen=True)
class FleetGroup:
    """``count`` clients on one device profile, spread over ``links`` by proportion."""

    count: int
    device: str
    links: Mapping[str, float]

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ConfigError(f"fleet group {self.device!r}: count={self.count} must be >= 1")
        if not self.links:
            raise ConfigError(f"fleet group {self.device!r}: links is empty; give link profiles "
                              "by proportion, e.g. {lte = 0.7, 3g = 0.3}")
        bad = {name: p for name, p in self.links.items() if not 0 < p <= 1}
        if bad:
            raise ConfigError(f"fleet group {self.device!r}: every link proportion must be in "
                              f"(0, 1], got {bad}")
        total = math.fsum(self.links.values())
        if abs(total - 1) > PROPORTION_TOLERANCE:
            raise ConfigError(f"fleet group {self.device!r}: link proportions "
                              f"{dict(self.links)} sum to {total:g}; they must sum to 1")

    def link_counts(self, rng: random.Random) -> dict[str, int]:
        """How many of the group's clients each link gets: largest remainder, ties drawn."""
        exact = {name: p * self.count for name, p in self.links.items()}
        counts = {name: math.floor(x) for name, x in exact.items()}
        order = list(exact)
        rng.shuffle(order)  # ties between equal remainders go to a drawn link, not file order
        order.sort(key=lambda name: exact[name] - counts[name], reverse=True)
        for name in order[:self.count - sum(counts.values())]:
            counts[name] += 1
        return counts


@dataclass(frozen=True)
class ClientAssignment:
    """Where one field client runs: its device profile and its link profile."""

    client_id: str
    device: str
    link: str


@dataclass(frozen=True)
class Fleet:
    """Groups of clients; see the module docstring. Unknown profile names are refused with
    the names that exist."""

    groups: tuple[FleetGroup, ...]
    name: str = "fleet"
    seed: int = 0
    links_file: str = ""
    """The link profiles to draw from (empty: the ones lpfl ships)."""

    def __post_init__(self) -> None:
        if not self.groups:
            raise ConfigError("field.fleet.groups is empty: add at least one "
                              "[[field.fleet.groups]] table")
        if not self.name or "/" in self.name:
            raise ConfigError(f"field.fleet.name={self.name!r} must be a non-empty name without "
                              "'/' (it names the run's output folder)")
        known_links = [p.name for p in load_profiles(self.link_file)]
        known_devices = shipped_device_names()
        for i, group in enumerate(self.groups):
            unknown = [n for n in group.links if n not in known_links]
            if unknown:
                raise ConfigError(f"field.fleet.groups[{i}]: unknown link profile "
                                  f"{', '.join(unknown)}; known: {', '.join(known_links)} "
                                  f"(in {self.link_file})")
            if group.device not in known_devices and not profile_path(group.device).is_file():
                raise ConfigError(f"field.fleet.groups[{i}]: unknown device profile "
                                  f"{group.device!r}; known: {', '.join(known_devices)}, or "
                                  "the path of a device profile file")

    @property
    def link_file(self) -> Path:
        return Path(self.links_file) if self.links_file else LINKS_FILE

    @property
    def size(self) -> int:
        """How many clients the fleet has."""
        return sum(group.count for group in self.groups)

    def assign(self) -> list[ClientAssignment]:
        """One assignment per client, ``client-0`` to ``client-<size-1>``, group by group."""
        rng = random.Random(self.seed)
        assignments: list[ClientAssignment] = []
        for group in self.groups:
            links = [name for name, n in group.link_counts(rng).items() for _ in range(n)]
            rng.shuffle(links)
            for link in links:
                assignments.append(ClientAssignment(f"client-{len(assignments)}", group.device,
                                                    link))
        return assignments

    def link_names(self) -> Sequence[str]:
        """The link profiles the fleet uses, each once, in order of first use."""
        return list(dict.fromkeys(a.link for a in self.assign()))


def load_fleet(path: str | Path) -> Fleet | None:
    """The ``[field.fleet]`` of a run file, or None when it has none."""
    table = read_toml(path).get("field", {})
    try:
        unknown = [key for key in table if key != "fleet"]
        if unknown:
            raise ConfigError(f"unknown key field.{unknown[0]}; known: fleet")
        if "fleet" not in table:
            return None
        return build_section(Fleet, table["fleet"], "field.fleet")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
