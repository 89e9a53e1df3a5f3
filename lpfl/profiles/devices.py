"""Device profiles: what an edge device may spend on a client, and how lpfl reaches it.

One TOML file per device; lpfl ships some in ``lpfl/profiles/data/devices/``::

    name = "phone-midrange"
    kind = "phone"              # emulator | phone | jetson
    cpu_arch = "aarch64"        # aarch64 | x86_64
    memory_budget_mb = 1024     # the client's peak resident memory may not exceed this
    threads = 4                 # torch intra-op threads
    link = "lte"                # a link profile (lpfl.profiles.links; shaping in `lpfl field`)
    route = "termux"            # termux: adb + a Python in a Termux-style prefix; native: ssh/shell
    python = "/data/data/com.termux/files/usr/bin/python3"
    device_dir = "/data/local/tmp/lpfl"
    source = "where the numbers come from"

    [speed]                     # optional: a published training speed, for `lpfl field`
    model_params_m = 124.0      # parameters of the model it was measured on, in millions
    train_tokens_per_s = 50.0   # eager LoRA training throughput on the device (tokens/s)
    source = "the paper or report, and its table"

The client checks ``memory_budget_mb`` before its first round (:mod:`lpfl.edge_client.budget`);
``lpfl device`` uses ``route``, ``python`` and ``device_dir``. ``source`` is required, as for link
profiles: a budget nobody can trace is a guess. So is a speed: a profile without a published
training throughput has no ``[speed]`` table, and ``lpfl field`` runs such a device unthrottled
(:mod:`lpfl.harness.field.cpu_quota`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from lpfl.config import build_section, read_toml
from lpfl.errors import ConfigError
from lpfl.profiles import PACKAGED

KINDS = ("emulator", "phone", "jetson")
ARCHS = ("aarch64", "x86_64")
ROUTES = ("termux", "native")
"""termux: driven over adb (push, reverse, shell); native: a board you log in to (a Jetson)."""
DEVICES_DIR = PACKAGED / "devices"
"""The device profiles that ship with lpfl."""


@dataclass(frozen=True)
class SpeedReference:
    """A device's published LoRA training throughput and the model it was measured on.

    ``lpfl field`` scales it to the run's model by parameter count (training compute grows with
    parameters times tokens) and compares it with this host's measured throughput to set the
    CPU quota that emulates the device.
    """

    model_params_m: float
    train_tokens_per_s: float
    source: str

    def __post_init__(self) -> None:
        if not 0 < self.model_params_m <= 1_000_000:
            raise ConfigError(f"speed.model_params_m={self.model_params_m} must be in "
                              "(0, 1000000] million parameters")
        if not 0 < self.train_tokens_per_s <= 1e9:
            raise ConfigError(f"speed.train_tokens_per_s={self.train_tokens_per_s} must be in "
                              "(0, 1e9]")
        if not self.source.strip():
            raise ConfigError("speed.source is empty; cite the measurement (paper and table)")

    def train_tokens_per_s_for(self, model_params: int) -> float:
        """The device's expected training throughput on a model of ``model_params``."""
        return self.train_tokens_per_s * self.model_params_m * 1e6 / model_params


@dataclass(frozen=True)
class DeviceProfile:
    """One device class; see the module docstring for the file format."""

    name: str
    kind: str
    cpu_arch: str
    memory_budget_mb: int
    threads: int
    link: str
    source: str
    route: str = "termux"
    python: str = "/data/data/com.termux/files/usr/bin/python3"
    device_dir: str = "/data/local/tmp/lpfl"
    speed: SpeedReference | None = None

    def __post_init__(self) -> None:
        for key, allowed in (("kind", KINDS), ("cpu_arch", ARCHS), ("route", ROUTES)):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"device profile {self.name}: {key}={getattr(self, key)!r}; "
                                  f"use one of {', '.join(allowed)}")
        if not 64 <= self.memory_budget_mb <= 1_048_576:
            raise ConfigError(f"device profile {self.name}: memory_budget_mb="
                              f"{self.memory_budget_mb} must be in [64, 1048576] MB")
        if not 1 <= self.threads <= 256:
            raise ConfigError(f"device profile {self.name}: threads={self.threads} must be in "
                              "[1, 256]")
        if not self.source.strip():
            raise ConfigError(f"device profile {self.name}: source is empty; cite where the "
                              "numbers come from")
        if self.route == "termux" and not (self.python.startswith("/")
                                           and self.device_dir.startswith("/")):
            raise ConfigError(f"device profile {self.name}: python and device_dir must be "
                              "absolute paths on the device")

    @property
    def memory_budget_bytes(self) -> int:
        return self.memory_budget_mb * 2**20


def shipped_device_names() -> list[str]:
    """The names of the device profiles that ship with lpfl, sorted."""
    return sorted(path.stem for path in DEVICES_DIR.glob("*.toml"))


def profile_path(name: str | Path) -> Path:
    """The file a ``--profile`` value names: a path, or the bare name of a shipped profile."""
    path = Path(name)
    return path if path.suffix or path.exists() else DEVICES_DIR / f"{path}.toml"


def load_device_profile(name: str | Path) -> DeviceProfile:
    """The profile in a TOML file (see :func:`profile_path`); errors name the file."""
    path = profile_path(name)
    table = read_toml(path)
    speed = table.pop("speed", None)
    try:
        profile = build_section(DeviceProfile, table, "")
        if speed is None:
            return profile
        if not isinstance(speed, dict):
            raise ConfigError(f"speed must be a table, got {speed!r}")
        return replace(profile, speed=build_section(SpeedReference, speed, "speed"))
    except TypeError as exc:  # a required key is missing
        raise ConfigError(f"{path}: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
