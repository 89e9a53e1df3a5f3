"""Shared fixtures: tiny configs and a separable toy data set written as a user CSV file."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from lpfl.config import RunConfig, config_from_dict

POSITIVE = ["good", "great", "fine", "best", "love", "fun", "beautiful", "funny", "wonderful"]
NEGATIVE = ["bad", "awful", "worst", "boring", "dull", "poor", "stupid", "mess", "waste"]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def write_toy_csv(path: Path, n: int = 400, seed: int = 0) -> Path:
    """A separable sentiment task: each text is four words from one class's word list."""
    rng = np.random.default_rng(seed)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        for i in range(n):
            label = i % 2
            words = rng.choice(POSITIVE if label else NEGATIVE, size=4)
            writer.writerow([" ".join(words), label])
    return path


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
