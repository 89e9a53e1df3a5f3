"""Link profiles: the rates and round-trip time a field run shapes each client's link to.

Profiles live in a TOML file, one table per profile (lpfl ships :data:`LINKS_FILE`)::

    [lte]
    uplink_mbit = 5.0      # client -> server
    downlink_mbit = 20.0   # server -> client
    rtt_ms = 50.0
    source = "where these numbers come from"

``source`` is required: a profile whose numbers cannot be traced is not worth measuring against.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lpfl.errors import ConfigError
from lpfl.profiles import PACKAGED

LINKS_FILE = PACKAGED / "links.toml"
"""The link profiles that ship with lpfl: lte, 3g, wifi."""


@dataclass(frozen=True)
class LinkProfile:
    """One kind of link, as the shaper and the delay proxy apply it to every client."""

    name: str
    uplink_mbit: float
    downlink_mbit: float
    rtt_ms: float
    source: str

    def __post_init__(self) -> None:
        for key in ("uplink_mbit", "downlink_mbit"):
            if not 0 < getattr(self, key) <= 10_000:
                raise ConfigError(f"link profile {self.name}: {key}={getattr(self, key)} must "
                                  "be in (0, 10000] Mbit/s")
        if not 0 <= self.rtt_ms <= 10_000:
            raise ConfigError(f"link profile {self.name}: rtt_ms={self.rtt_ms} must be in "
                              "[0, 10000]")
        if not self.source.strip():
            raise ConfigError(f"link profile {self.name}: source is empty; cite where the "
                              "numbers come from")

    @property
    def one_way_delay_s(self) -> float:
        """The delay the proxy adds in each direction: half the round-trip time."""
        return self.rtt_ms / 2000.0

    def seconds_for(self, nbytes: int, direction: str) -> float:
        """The physical limit: ``nbytes`` at the profile's rate in ``direction`` (up/down)."""
        mbit = self.uplink_mbit if direction == "up" else self.downlink_mbit
        return nbytes * 8 / (mbit * 1e6)


def load_profiles(path: str | Path, names: Sequence[str] | None = None) -> list[LinkProfile]:
    """The profiles of ``path`` named in ``names`` (all of them, in file order, when None)."""
    p = Path(path)
    try:
        table = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"link profile file {p} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    wanted = list(names) if names is not None else list(table)
    unknown = [n for n in wanted if n not in table]
    if unknown:
        raise ConfigError(f"{p}: no link profile named {', '.join(unknown)}; "
                          f"it has {', '.join(table)}")
    profiles = []
    for name in wanted:
        fields = {k.replace("-", "_"): v for k, v in table[name].items()}
        try:
            profiles.append(LinkProfile(name=name, **fields))
        except TypeError as exc:
            raise ConfigError(f"{p}: [{name}]: {exc}; expected uplink_mbit, downlink_mbit, "
                              "rtt_ms, source") from None
    return profiles
