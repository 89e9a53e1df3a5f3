"""A run keeps its final adapter as a PEFT folder that ``PeftModel.from_pretrained`` loads back
to the run's final class scores; methods without an adapter say so and write nothing."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from lpfl.adapter_folder import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    PROMPT_FILE,
    class_names,
    load_adapter_model,
    read_adapter_info,
    read_adapter_state,
    write_adapter_folder,
)
from lpfl.cli import main
from lpfl.config import load_config
from lpfl.errors import ModelError
from lpfl.model import tiny
from lpfl.model.adapters import load_trainable_state, trainable_state
from lpfl.model.loading import BaseModel
from lpfl.model.prompt import PromptModel
from lpfl.simulate import federate, federated_data, fresh_prompt_model
from tests.conftest import tiny_config, write_run_file

RUN: dict[str, dict[str, object]] = {
    "prompt": {"pattern": "Review: {text}\nIt was", "label_words": [" bad", " good"]},
    "data": {"label_names": ["negative", "positive"]},
    "federation": {"lr": 0.05},
    "run": {"methods": ["lp-fl", "fp-fl", "zero-shot"]},
}


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """``lpfl simulate`` of RUN: the run file, the output folder and what it printed."""
    folder = tmp_path_factory.mktemp("simulated")
    run_file = write_run_file(folder / "run.toml", "mr", **RUN)
    out = folder / "out"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["simulate", "--config", str(run_file), "--out", str(out)]) == 0
    return run_file, out, printed.getvalue()


def test_peft_loads_the_folder_to_the_runs_final_scores(simulated: tuple[Path, Path, str]
                                                        ) -> None:
    run_file, out, _ = simulated
    folder = out / "adapters" / "lp-fl-seed0"
    assert sorted(p.name for p in folder.iterdir()) == [ADAPTER_CONFIG, ADAPTER_WEIGHTS,
                                                         PROMPT_FILE]
    config = load_config(run_file)
    data = federated_data(config, 0)
    _, final = federate(config, "lp-fl", 0, data, lambda _: None)
    texts = [example.text for example in data.test[:40]]
    trained = fresh_prompt_model(config, "lora", 0)
    load_trainable_state(trained, final)
    expected = trained.score(texts)
    untrained = fresh_prompt_model(config, "frozen", 0).score(texts)
    assert not torch.allclose(expected, untrained, atol=1e-4)  # the adapter changed the model

    # Plain PEFT on the tiny-llama base, with the prompt the folder records.
    model, tokenizer, kind = tiny.build("tiny-llama")
    recorded = json.loads((folder / PROMPT_FILE).read_text())
    info = read_adapter_info(folder)
    assert recorded["prompt"]["label_words"] == [" bad", " good"]
    pm = PromptModel(BaseModel(model, tokenizer, kind, "tiny-llama"), info.prompt,
                     info.model.max_length)
    pm.network = PeftModel.from_pretrained(model, str(folder))
    torch.testing.assert_close(pm.score(texts), expected, atol=1e-5, rtol=1e-4)

    loaded, _ = load_adapter_model(folder)
    torch.testing.assert_close(loaded.score(texts), expected, atol=1e-5, rtol=1e-4)
    state = read_adapter_state(folder)
    assert set(state) == set(final)
    for name, tensor in final.items():
        torch.testing.assert_close(state[name], tensor)


def test_the_folder_records_model_prompt_and_class_names(simulated: tuple[Path, Path, str]
                                                         ) -> None:
    _, out, _ = simulated
    info = read_adapter_info(out / "adapters" / "lp-fl-seed0")
    assert (info.model.source, info.model.max_length, info.model_id) == ("tiny-llama", 48,
                                                                         "tiny-llama")
    assert info.prompt.pattern == "Review: {text}\nIt was"
    assert info.class_names == ("negative", "positive")
    assert (info.method, info.seed) == ("lp-fl", 0)
    adapter_config = json.loads((out / "adapters" / "lp-fl-seed0" / ADAPTER_CONFIG).read_text())
    assert (adapter_config["peft_type"], adapter_config["r"]) == ("LORA", 8)
    assert sorted(adapter_config["target_modules"]) == ["q_proj", "v_proj"]


def test_methods_without_an_adapter_say_so_and_write_nothing(simulated: tuple[Path, Path, str]
                                                             ) -> None:
    _, out, printed = simulated
    assert sorted(p.name for p in (out / "adapters").iterdir()) == ["lp-fl-seed0"]
    assert "fp-fl seed 0: trains every parameter, so there is no adapter" in printed
    assert "zero-shot seed 0: trains nothing, so there is no adapter" in printed
    assert f"final adapter in {out / 'adapters' / 'lp-fl-seed0'}" in printed
    with pytest.raises(ModelError, match="fp-fl does not train a LoRA adapter"):
        write_adapter_folder(out / "fp", tiny_config(), {}, "fp-fl", 0)


def test_a_second_write_replaces_the_folder_whole(tmp_path: Path) -> None:
    config = tiny_config()
    state = trainable_state(fresh_prompt_model(config, "lora", 0))
    folder = tmp_path / "adapter"
    write_adapter_folder(folder, config, state, "lp-fl", 0)
    (folder / "stale.txt").write_text("left from before")
    write_adapter_folder(folder, config, state, "lp-fl-no-soft", 1)
    assert not (folder / "stale.txt").exists()
    assert read_adapter_info(folder).method == "lp-fl-no-soft"
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]  # no temporary folder left


@pytest.mark.parametrize("missing", [ADAPTER_CONFIG, ADAPTER_WEIGHTS, PROMPT_FILE])
def test_an_incomplete_folder_names_the_missing_file(tmp_path: Path, missing: str) -> None:
    config = tiny_config()
    state = trainable_state(fresh_prompt_model(config, "lora", 0))
    folder = write_adapter_folder(tmp_path / "a", config, state, "lp-fl", 0)
    (folder / missing).unlink()
    with pytest.raises(ModelError, match=f"not an lpfl adapter folder: {missing} is missing"):
        load_adapter_model(folder)


def test_class_names_come_from_label_names_else_the_label_words() -> None:
    assert class_names(tiny_config()) == ("terrible", "great")
    named = tiny_config(data={"label_names": ["neg", "pos"]})
    assert class_names(named) == ("neg", "pos")
    clashing = tiny_config(prompt={"label_words": [" great", "great"]})
    assert class_names(clashing) == ("class-0", "class-1")

