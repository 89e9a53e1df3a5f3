"""Shared fixtures: tiny configs and a separable toy data set written as a user CSV file."""

from __future__ import annotations

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


def tiny_config(dataset: str = "mr", **sections: dict[str, object]) -> RunConfig:
    table: dict[str, dict[str, object]] = {
        "model": {"source": "tiny-llama", "max_length": 48},
        "data": {"dataset": dataset, "test_size": 100, "validation_size": 0,
                 "shots_per_class": 8, "unlabeled_per_client": 16, "num_clients": 2},
        "federation": {"rounds": 2, "clients_per_round": 2, "local_steps": 2, "batch_size": 4},
        "run": {"methods": ["lp-fl"], "eval_batch_size": 64},
    }
    for name, values in sections.items():
        table.setdefault(name, {}).update(values)
    return config_from_dict(table)
