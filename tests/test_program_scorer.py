"""The on-device scorer: a new adapter without re-export, refusals, batching, the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lpfl.cli import main
from lpfl.config import LoraSettings, ModelSettings, PromptSettings, RunConfig
from lpfl.errors import ArtefactError, ConfigError
from lpfl.export import pipeline, stages
from lpfl.export.config import ExportConfig
from lpfl.export.parity import FP32_TOLERANCE, parity_texts, random_adapter
from lpfl.model.adapters import load_trainable_state, trainable_state
from lpfl.model.prompt import PromptModel
from lpfl.program_scorer import ProgramScorer
from tests.export_artefacts import MAX_SEQ_LEN, SEVERAL_TOKEN_WORDS, exported

RUNTIMES = {"executorch-xnnpack": "executorch", "onnx": "onnxruntime"}


@pytest.fixture(scope="module")
def eager() -> PromptModel:
    torch.set_num_threads(1)
    run = RunConfig(model=ModelSettings(source="tiny-llama", max_length=MAX_SEQ_LEN))
    pm = stages.load(run)
    stages.prepare_lora(pm, run.lora)
    return pm


def _scorer(target: str, pm: PromptModel, folder: Path | None = None) -> ProgramScorer:
    shapes = {n: tuple(t.shape) for n, t in trainable_state(pm).items()}
    return ProgramScorer(folder or exported(target)[0], runtime=RUNTIMES[target],
                         model_id="tiny-llama", lora_shapes=shapes)


@pytest.mark.parametrize("target", list(RUNTIMES))
def test_new_adapter_without_reexport_gives_eager_logits(target: str,
                                                         eager: PromptModel) -> None:
    scorer = _scorer(target, eager)
    texts = [*parity_texts(13, seed=5), "word " * 100]  # one text longer than max_seq_len
    for seed in (11, 12):
        adapter = random_adapter(eager, seed=seed)
        load_trainable_state(eager, adapter)
        scorer.load_state(adapter)
        expected = eager.score(texts)
        got = scorer.score(texts, batch_size=4)
        assert got.shape == (len(texts), scorer.num_classes)
        torch.testing.assert_close(got, expected, rtol=0, atol=FP32_TOLERANCE)
    assert scorer.score([]).shape == (0, scorer.num_classes)


@pytest.mark.parametrize("target", list(RUNTIMES))
def test_label_words_of_several_tokens_score_as_eager(target: str) -> None:
    folder, manifest, parity = exported(target, label_words=SEVERAL_TOKEN_WORDS)
    assert [len(word) for word in manifest.label_tokens] == [1, 2, 4]
    assert max(parity.max_abs_diff, parity.random_adapter_max_abs_diff) <= FP32_TOLERANCE
    prompt = PromptSettings(label_words=SEVERAL_TOKEN_WORDS)
    run = RunConfig(model=ModelSettings(source="tiny-llama", max_length=MAX_SEQ_LEN),
                    prompt=prompt)
    pm = stages.load(run)
    stages.prepare_lora(pm, run.lora)
    scorer = ProgramScorer(folder, runtime=RUNTIMES[target], model_id="tiny-llama",
                           lora_shapes=dict(manifest.lora_shapes), prompt=prompt)
    adapter = random_adapter(pm, seed=3)
    load_trainable_state(pm, adapter)
    scorer.load_state(adapter)
    texts = [*parity_texts(11, seed=7), "word " * 100]
    expected = pm.score(texts)
    assert bool((expected < 0).all())  # summed log-probabilities
    torch.testing.assert_close(scorer.score(texts, batch_size=4), expected, rtol=0,
                               atol=FP32_TOLERANCE)


def test_wrong_adapter_state_is_refused(eager: PromptModel) -> None:
    scorer = _scorer("onnx", eager)
    state = trainable_state(eager)
    name = next(iter(state))
    with pytest.raises(ArtefactError, match="shape"):
        scorer.load_state({**state, name: torch.zeros(3, 3)})
    with pytest.raises(ArtefactError, match="missing"):
        scorer.load_state({k: v for k, v in state.items() if k != name})


def _edited_copy(tmp_path: Path, **fields: object) -> Path:
    folder = shutil.copytree(exported("onnx")[0], tmp_path / "artefact")
    table = json.loads((folder / "manifest.json").read_text())
    table.update(fields)
    (folder / "manifest.json").write_text(json.dumps(table))
    return folder


def test_artefact_from_other_runtime_version_or_model_is_refused(
        tmp_path: Path, eager: PromptModel) -> None:
    table = json.loads((exported("onnx")[0] / "manifest.json").read_text())
    programs = [{**p, "runtime_version": "1.19.2"} for p in table["programs"]]
    with pytest.raises(ArtefactError, match=r"runtime_version.*onnxruntime==1\.19\.2"):
        _scorer("onnx", eager, _edited_copy(tmp_path / "v", programs=programs))
    with pytest.raises(ArtefactError, match=r"model_id.*--backend eager"):
        _scorer("onnx", eager, _edited_copy(tmp_path / "m", model_id="smollm2"))
    with pytest.raises(ArtefactError, match=r"runtime: .*--target"):
        _scorer("executorch-xnnpack", eager, exported("onnx")[0])


def test_label_tokens_the_tokenizer_does_not_give_are_refused(
        tmp_path: Path, eager: PromptModel) -> None:
    tokens = [[*word, word[0]] for word in eager.encoder.label_tokens]
    with pytest.raises(ArtefactError, match=r"tokens .* its manifest says .* copy the artefact"):
        _scorer("onnx", eager, _edited_copy(tmp_path, label_tokens=tokens))


def test_run_with_another_prompt_or_length_is_refused(eager: PromptModel) -> None:
    folder, manifest, _ = exported("onnx")
    shapes = dict(manifest.lora_shapes)
    same = PromptSettings(manifest.pattern, manifest.label_words)
    ProgramScorer(folder, runtime="onnxruntime", model_id="tiny-llama", lora_shapes=shapes,
                  prompt=same, max_seq_len=manifest.max_seq_len)
    for prompt, field in ((PromptSettings("Movie: {text} It was", manifest.label_words),
                           "pattern"),
                          (PromptSettings(manifest.pattern, (" bad", " good")), "label_words")):
        with pytest.raises(ArtefactError, match=rf"{field}.*--backend eager"):
            ProgramScorer(folder, runtime="onnxruntime", model_id="tiny-llama",
                          lora_shapes=shapes, prompt=prompt)
    with pytest.raises(ArtefactError, match="max_seq_len"):
        ProgramScorer(folder, runtime="onnxruntime", model_id="tiny-llama", lora_shapes=shapes,
                      prompt=same, max_seq_len=manifest.max_seq_len + 16)


def test_client_with_other_lora_shapes_is_refused(eager: PromptModel) -> None:
    shapes = {n: (4, *t.shape[1:]) if "lora_A" in n else (t.shape[0], 4)
              for n, t in trainable_state(eager).items()}
    with pytest.raises(ArtefactError, match=r"lora_shapes.*other shape"):
        ProgramScorer(exported("onnx")[0], runtime="onnxruntime", model_id="tiny-llama",
                      lora_shapes=shapes)


def test_runtimes_are_imported_only_when_an_artefact_is_opened() -> None:
    code = ("import sys, lpfl.cli, lpfl.program_scorer, lpfl.export.pipeline; "
            "assert not {'executorch', 'onnxruntime'} & set(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_reports_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["export", "--model", "tiny-llama", "--out", str(tmp_path)]
    assert main([*args, "--target", "executorch-portable", "--quant", "int8"]) == 2
    assert "--target executorch-xnnpack" in capsys.readouterr().err
    assert main([*args, "--target", "onnx", "--max-seq-len", "3"]) == 2
    assert main([*args, "--target", "onnx", "--model", "no/such/model"]) == 2
    assert "neither" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--target", "tflite"])


def test_training_flag_without_the_training_exporter_says_so(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, eager: PromptModel) -> None:
    monkeypatch.setitem(sys.modules, "lpfl.export.training_program", None)
    config = ExportConfig(model="tiny-llama", target="executorch-xnnpack", out=tmp_path,
                          training=True)
    with pytest.raises(ConfigError, match="without --training"):
        pipeline.build_training_program(config, eager)


def test_lora_settings_of_the_run_reach_the_manifest() -> None:
    manifest = exported("onnx")[1]
    assert manifest.lora == LoraSettings()
    assert all(".lora_" in name for name in manifest.lora_shapes)
    assert manifest.max_seq_len == MAX_SEQ_LEN
    assert (exported("onnx")[0] / manifest.tokenizer_dir / "tokenizer.json").is_file()
