"""The aggregator's checkpoint: written atomically after every round, read by ``--resume``.

One safetensors file: the global state as float32 tensors, and in its metadata (key
``lpfl.checkpoint``) a JSON document with the last completed round, the history of
:class:`~lpfl.records.RoundRecord` and the server's torch RNG state. One file means one
atomic rename: a crash at any moment leaves the previous round's checkpoint or this one.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save

from lpfl.errors import ConfigError
from lpfl.records import RoundRecord
from lpfl.results import write_atomically

_KEY = "lpfl.checkpoint"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Checkpoint:
    """Everything needed to continue a run after round ``round``."""

    round: int
    global_state: Mapping[str, torch.Tensor]
    rounds: Sequence[RoundRecord]
    rng_state: bytes
    """``torch.get_rng_state()`` of the server process, restored on resume."""


def save_checkpoint(path: str | Path, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` to ``path`` atomically (temp file, fsync, rename)."""
    document = {
        "format": FORMAT_VERSION,
        "round": checkpoint.round,
        "rounds": [r.to_dict() for r in checkpoint.rounds],
        "rng_state": base64.b64encode(checkpoint.rng_state).decode("ascii"),
    }
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous()
               for k, v in checkpoint.global_state.items()}
    write_atomically(Path(path), st_save(tensors, metadata={_KEY: json.dumps(document)}))


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`; a :class:`ConfigError` says why not."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        document = json.loads(metadata[_KEY])
        if document.get("format") != FORMAT_VERSION:
            raise ValueError(f"unknown checkpoint format {document.get('format')!r}")
        return Checkpoint(int(document["round"]), state,
                          [RoundRecord.from_dict(r) for r in document["rounds"]],
                          base64.b64decode(document["rng_state"]))
    except (OSError, SafetensorError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"checkpoint {path} cannot be resumed from: {exc}") from None
