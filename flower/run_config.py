"""What a Flower run of lpfl is told: the run file, the method and seed, where results go.

Flower passes an app's settings as its *run config* (``[tool.flwr.app.config]`` in the app's
``pyproject.toml``, overridden with ``flwr run --run-config``). lpfl's live in the run file it
names, so that one file drives ``lpfl simulate``, ``lpfl launch`` and the Flower app.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lpfl.config import RunConfig
from lpfl.errors import ConfigError
from lpfl.methods import lookup
from lpfl.protocol import RoundRules
from lpfl.transport import load_server_config


@dataclass(frozen=True)
class FlowerRun:
    """The Flower run config's keys, validated."""

    config: Path
    """The lpfl run file (TOML); relative paths are taken from the working directory."""
    method: str = "lp-fl"
    seed: int = 0
    out: Path = Path("runs/flower")
    """Where the ServerApp writes results.json and report.md."""
    node_timeout_s: float = 600.0
    """How long the ServerApp waits for every node to appear and for each round's replies."""

    def __post_init__(self) -> None:
        try:
            federated = lookup(self.method).federated
        except ValueError as error:
            raise ConfigError(f"Flower run config: {error}") from None
        if not federated:
            raise ConfigError(f"Flower run config method={self.method!r}: use a federated "
                              "method such as 'lp-fl', 'lp-fl-no-soft' or 'fp-fl'")
        if self.node_timeout_s <= 0:
            raise ConfigError(f"Flower run config node-timeout-s={self.node_timeout_s} must "
                              "be > 0")

    @classmethod
    def from_run_config(cls, values: Mapping[str, object]) -> FlowerRun:
        """From Flower's run config (keys with dashes); a ConfigError names what is wrong."""
        known = {"config", "method", "seed", "out", "node-timeout-s"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"Flower run config has unknown keys {unknown}; lpfl reads "
                              f"{sorted(known)} (the rest lives in the run file)")
        if not values.get("config"):
            raise ConfigError("Flower run config needs config='path/to/run.toml' (the lpfl run "
                              "file), e.g. flwr run --run-config \"config='run.toml'\"")
        try:
            return cls(config=Path(str(values["config"])),
                       method=str(values.get("method", "lp-fl")),
                       seed=int(str(values.get("seed", 0))),
                       out=Path(str(values.get("out", "runs/flower"))),
                       node_timeout_s=float(str(values.get("node-timeout-s", 600.0))))
        except ValueError as error:
            raise ConfigError(f"Flower run config: {error}") from error

    def to_run_config(self) -> dict[str, str | int | float]:
        """The Flower run config that :meth:`from_run_config` reads back."""
        return {"config": str(self.config), "method": self.method, "seed": self.seed,
                "out": str(self.out), "node-timeout-s": self.node_timeout_s}

    def load(self) -> tuple[RunConfig, RoundRules]:
        """The lpfl run file it names, loaded and validated, and its ``[server.round]`` rules
        (encodings, clipping, aggregation, guards), which apply as in ``lpfl simulate``."""
        if not self.config.is_file():
            raise ConfigError(f"Flower run config config={str(self.config)!r}: no such run file "
                              f"(working directory {Path.cwd()})")
        config, server = load_server_config(self.config, ())
        return config, server.round


def final_state_path(run: FlowerRun) -> Path:
    """Where the ServerApp keeps the run's final global state (safetensors)."""
    return run.out / f"{run.method}-seed{run.seed}.safetensors"
