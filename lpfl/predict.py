"""Use a kept adapter: predictions for a file of texts, or accuracy on a labeled one.

``lpfl predict`` and ``lpfl eval`` read an adapter folder (:mod:`lpfl.adapter_folder`) and a
``.csv``/``.jsonl`` file in the format of :mod:`lpfl.data.user_files`. They score on eager
PyTorch (the base model plus the PEFT adapter), or on a program exported by ``lpfl export``
(``executorch`` or ``onnxruntime``) with the adapter written into it, as a client does.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from lpfl.adapter_folder import (
    AdapterInfo,
    load_adapter_model,
    read_adapter_info,
    read_adapter_state,
)
from lpfl.data.user_files import Labels, Row, read_rows
from lpfl.errors import ConfigError, DataError

BACKENDS = ("eager", "executorch", "onnxruntime")
OUTPUT_SUFFIXES = (".csv", ".jsonl")


class Scorer(Protocol):
    def score(self, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor: ...


@dataclass(frozen=True)
class Prediction:
    """One row's prediction: its line in the input, its text, the class and every class's
    probability (softmax of the label words' logits)."""

    line: int
    text: str
    label: int
    probabilities: tuple[float, ...]


def open_scorer(adapter: Path, backend: str = "eager", artefact: Path | None = None,
                model_source: str | None = None) -> tuple[Scorer, AdapterInfo]:
    """A scorer for the adapter folder on ``backend``: eager PyTorch, or the score program of
    ``artefact`` (made by ``lpfl export`` for the same base model, prompt and LoRA shapes)."""
    if backend not in BACKENDS:
        raise ConfigError(f"--backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if backend == "eager":
        return load_adapter_model(adapter, model_source)
    if artefact is None:
        raise ConfigError(f"--backend {backend} needs --artefact DIR, a folder made by "
                          "`lpfl export` for this adapter's base model")
    from lpfl.program_scorer import ProgramScorer

    info = read_adapter_info(adapter)
    state = read_adapter_state(adapter)
    program = ProgramScorer(artefact, runtime=backend, model_id=info.model_id,
                            lora_shapes={name: tuple(t.shape) for name, t in state.items()},
                            prompt=info.prompt, max_seq_len=info.model.max_length)
    program.load_state(state)
    return program, info


def predict(scorer: Scorer, rows: Sequence[Row], batch_size: int = 32) -> list[Prediction]:
    """Every row's prediction, in the rows' order."""
    probabilities = torch.softmax(scorer.score([r.text for r in rows], batch_size).float(), -1)
    return [Prediction(row.line, row.text, int(p.argmax()), tuple(float(x) for x in p))
            for row, p in zip(rows, probabilities, strict=True)]


def prediction_rows(predictions: Sequence[Prediction], names: Sequence[str]
                    ) -> list[dict[str, object]]:
    """Predictions as flat records: ``line``, ``text``, ``prediction`` (a class name) and one
    ``p_NAME`` probability per class."""
    return [{"line": p.line, "text": p.text, "prediction": names[p.label],
             **{f"p_{name}": round(prob, 6) for name, prob in zip(names, p.probabilities,
                                                                    strict=True)}}
            for p in predictions]


def write_predictions(path: Path | None, predictions: Sequence[Prediction],
                      names: Sequence[str]) -> None:
    """Write predictions as CSV or JSONL by ``path``'s suffix; JSONL on stdout without a path."""
    records = prediction_rows(predictions, names)
    if path is not None and path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise DataError(f"--output {path}: use a .csv or .jsonl file name")
    if path is not None and path.suffix.lower() == ".csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(records[0]) if records else ["line"])
        writer.writeheader()
        writer.writerows(records)
        text = buffer.getvalue()
    else:
        text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    if path is None:
        sys.stdout.write(text)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", newline="")


def predict_file(adapter: Path, input_file: Path, output: Path | None, backend: str = "eager",
                 artefact: Path | None = None, model_source: str | None = None,
                 batch_size: int = 32) -> list[Prediction]:
    """``lpfl predict``: one prediction per row of ``input_file`` (labels, if any, unused)."""
    scorer, info = open_scorer(adapter, backend, artefact, model_source)
    rows = read_rows(input_file, info.prompt.num_classes, info.class_names, Labels.IGNORED)
    predictions = predict(scorer, rows, batch_size)
    write_predictions(output, predictions, info.class_names)
    return predictions


@dataclass(frozen=True)
class Evaluation:
    """Accuracy of an adapter on a labeled file, overall and per true class."""

    rows: int
    correct: int
    per_class: dict[str, tuple[int, int]]
    """class name -> (correct, rows of that class)."""

    @property
    def accuracy(self) -> float:
        return self.correct / self.rows

    def summary(self, source: Path) -> str:
        classes = ", ".join(f"{name} {hit}/{total}" for name, (hit, total)
                            in self.per_class.items())
        return (f"accuracy {self.accuracy:.4f} on {self.rows} labeled rows of {source} "
                f"({classes})")


def evaluate_file(adapter: Path, input_file: Path, backend: str = "eager",
                  artefact: Path | None = None, model_source: str | None = None,
                  batch_size: int = 32) -> Evaluation:
    """``lpfl eval``: accuracy on ``input_file``, whose every row has a label (a class index
    or a class name of the adapter)."""
    scorer, info = open_scorer(adapter, backend, artefact, model_source)
    rows = read_rows(input_file, info.prompt.num_classes, info.class_names, Labels.REQUIRED)
    predictions = predict(scorer, rows, batch_size)
    per_class = {name: (0, 0) for name in info.class_names}
    for row, prediction in zip(rows, predictions, strict=True):
        name = info.class_names[row.label or 0]  # Labels.REQUIRED: every row has a label
        hit, total = per_class[name]
        per_class[name] = (hit + int(prediction.label == row.label), total + 1)
    correct = sum(hit for hit, _ in per_class.values())
    return Evaluation(len(rows), correct, per_class)
