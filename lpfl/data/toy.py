"""A separable toy sentiment task, for quick end-to-end checks and cheap benchmarks.

Each text is four words drawn from one class's word list, so a tiny randomly initialised model
learns it in a few federated rounds: what tests and the robustness benchmark need to see a
federation learn (or be broken) in seconds.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

POSITIVE = ["good", "great", "fine", "best", "love", "fun", "beautiful", "funny", "wonderful"]
NEGATIVE = ["bad", "awful", "worst", "boring", "dull", "poor", "stupid", "mess", "waste"]


def write_toy_csv(path: Path, n: int = 400, seed: int = 0) -> Path:
    """Write ``n`` examples (labels alternating 0, 1) as a ``text,label`` CSV file at ``path``."""
    rng = np.random.default_rng(seed)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        for i in range(n):
            label = i % 2
            words = rng.choice(POSITIVE if label else NEGATIVE, size=4)
            writer.writerow([" ".join(words), label])
    return path
