"""Shared fixtures: tiny configs and a separable toy data set written as a user CSV file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lpfl.config import RunConfig, config_from_dict
from lpfl.data.toy import write_toy_csv


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def toy_csv(tmp_path: Path) -> Path:
    return write_toy_csv(tmp_path / "toy.csv")


def tiny_table(dataset: str = "mr", **sections: dict[str, object]) -> dict[str, dict[str, object]]:
    """A small run on tiny-llama as a table of sections; ``sections`` add or replace keys."""
    table: dict[str, dict[str, object]] = {
        "model": {"source": "tiny-llama", "max_length": 48},
        "data": {"dataset": dataset, "test_size": 100, "validation_size": 0,
                 "shots_per_class": 8, "unlabeled_per_client": 16, "num_clients": 2},
        "federation": {"rounds": 2, "clients_per_round": 2, "local_steps": 2, "batch_size": 4},
        "run": {"methods": ["lp-fl"], "eval_batch_size": 64},
    }
    for name, values in sections.items():
        table.setdefault(name, {}).update(values)
    return table


def tiny_config(dataset: str = "mr", **sections: dict[str, object]) -> RunConfig:
    return config_from_dict(tiny_table(dataset, **sections))


def write_run_file(path: Path, dataset: str = "mr", **sections: dict[str, object]) -> Path:
    """:func:`tiny_table` written as a TOML run file at ``path`` (values: strings, numbers,
    booleans and lists of them, which JSON writes as TOML does)."""
    lines = []
    for name, values in tiny_table(dataset, **sections).items():
        lines += [f"[{name}]", *(f"{key} = {json.dumps(value)}" for key, value in values.items())]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
