"""``lpfl predict`` and ``lpfl eval`` on a kept adapter folder: eager, and on an exported ONNX
program with the adapter written into it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from lpfl.adapter_folder import load_adapter_model, write_adapter_folder
from lpfl.cli import main
from lpfl.data.toy import write_toy_csv
from lpfl.model.adapters import trainable_state
from lpfl.simulate import fresh_prompt_model
from tests.conftest import tiny_config
from tests.export_artefacts import exported

NAMES = ("negative", "positive")


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a random non-zero adapter for tiny-llama (the default prompt, classes
    named negative and positive)."""
    config = tiny_config(data={"label_names": list(NAMES)})
    state = trainable_state(fresh_prompt_model(config, "lora", 0))
    generator = torch.Generator().manual_seed(1)
    state = {name: (torch.randn(t.shape, generator=generator) * 0.3 if "lora_B" in name else t)
             for name, t in state.items()}
    return write_adapter_folder(tmp_path_factory.mktemp("kept") / "adapter", config, state,
                                "lp-fl", 0)


@pytest.fixture(scope="module")
def texts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 toy sentences, labels 0/1 alternating, the first ten written as class names."""
    path = write_toy_csv(tmp_path_factory.mktemp("texts") / "toy.csv", n=60)
    lines = path.read_text().splitlines()
    named = [lines[0]] + [f"{line.rsplit(',', 1)[0]},{NAMES[int(line.rsplit(',', 1)[1])]}"
                          if i < 10 else line for i, line in enumerate(lines[1:])]
    path.write_text("\n".join(named) + "\n")
    return path


def _expected(adapter: Path, input_file: Path) -> tuple[list[str], torch.Tensor]:
    with input_file.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    model, _ = load_adapter_model(adapter)
    texts = [row["text"] for row in rows]
    return texts, torch.softmax(model.score(texts), -1)


def test_predict_writes_one_row_per_text_as_csv_or_jsonl(
        adapter: Path, texts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sentences, probabilities = _expected(adapter, texts)
    assert main(["predict", "--adapter", str(adapter), "--input", str(texts),
                 "--output", str(tmp_path / "p.csv")]) == 0
    assert "wrote 60 predictions" in capsys.readouterr().out
    with (tmp_path / "p.csv").open(newline="") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == ["line", "text", "prediction", "p_negative", "p_positive"]
    assert [row["text"] for row in table] == sentences
    assert [int(row["line"]) for row in table] == list(range(2, 62))
    assert [row["prediction"] for row in table] == [NAMES[int(p.argmax())] for p in probabilities]
    got = torch.tensor([[float(row["p_negative"]), float(row["p_positive"])] for row in table])
    torch.testing.assert_close(got, probabilities, atol=1e-5, rtol=0)
    assert len({row["prediction"] for row in table}) == 2  # a real adapter, not a constant

    assert main(["predict", "--adapter", str(adapter), "--input", str(texts),
                 "--output", str(tmp_path / "p.jsonl")]) == 0
    records = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["prediction"] for r in records] == [row["prediction"] for row in table]

    capsys.readouterr()
    assert main(["predict", "--adapter", str(adapter), "--input", str(texts)]) == 0
    streamed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert streamed == records


def test_predict_needs_no_labels(adapter: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    plain = tmp_path / "plain.jsonl"
    plain.write_text('{"text": "great fun"}\n{"text": "awful mess", "label": "?"}\n')
    assert main(["predict", "--adapter", str(adapter), "--input", str(plain)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["line"] for line in lines] == [1, 2]


def test_eval_reports_accuracy_per_class(adapter: Path, texts: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    _, probabilities = _expected(adapter, texts)
    labels = torch.tensor([i % 2 for i in range(60)])
    hits = probabilities.argmax(-1) == labels
    assert main(["eval", "--adapter", str(adapter), "--input", str(texts)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"accuracy {hits.float().mean():.4f} on 60 labeled rows of {texts}")
    assert f"negative {int(hits[labels == 0].sum())}/30" in line
    assert f"positive {int(hits[labels == 1].sum())}/30" in line


@pytest.mark.parametrize(("content", "message"), [
    ("text,label\ngood,positive\nbad,\n", ", line 3: empty label"),
    ("text,label\ngood,positive\nbad,neutral\n", ", line 3: label 'neutral' is not a class"),
    ("text\ngood\n", ", line 1: missing column 'label'"),
])
def test_eval_refuses_a_file_without_every_label(
        adapter: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str,
        message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    assert main(["eval", "--adapter", str(adapter), "--input", str(path)]) == 2
    assert f"error: {path}{message}" in capsys.readouterr().err


def test_a_folder_that_is_not_an_adapter_is_refused(
        tmp_path: Path, texts: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", "--adapter", str(tmp_path), "--input", str(texts)]) == 2
    assert "is not an lpfl adapter folder: adapter_config.json is missing" in (
        capsys.readouterr().err)


def test_eval_on_an_exported_onnx_program_matches_eager(
        adapter: Path, texts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder, _, _ = exported("onnx")
    capsys.readouterr()  # the exporter's progress
    args = ["--adapter", str(adapter), "--input", str(texts)]
    assert main(["eval", *args]) == 0
    eager = capsys.readouterr().out
    assert main(["eval", *args, "--backend", "onnxruntime", "--artefact", str(folder)]) == 0
    assert capsys.readouterr().out == eager
    assert main(["predict", *args, "--backend", "onnxruntime", "--artefact", str(folder),
                 "--output", str(tmp_path / "onnx.jsonl")]) == 0
    onnx = [json.loads(line) for line in (tmp_path / "onnx.jsonl").read_text().splitlines()]
    _, probabilities = _expected(adapter, texts)
    got = torch.tensor([[r["p_negative"], r["p_positive"]] for r in onnx])
    torch.testing.assert_close(got, probabilities, atol=1e-4, rtol=0)
    assert main(["eval", *args, "--backend", "onnxruntime"]) == 2
    assert "--backend onnxruntime needs --artefact DIR" in capsys.readouterr().err
