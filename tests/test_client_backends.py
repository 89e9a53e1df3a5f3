"""A client on exported programs computes the same round as the eager client.

The shared tiny-llama artefact (XNNPACK score program + ExecuTorch training program, see
``tests/export_artefacts.py``) serves the program client; an eager client and a program client
then run the same round from the same global adapter: the same soft labels, the same number of
examples and (within float tolerance) the same trained adapter. The ONNX Runtime backend scores
with its program and trains eagerly.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from lpfl.backends import check_backend, program_runtime
from lpfl.client_round import LocalClient
from lpfl.config import RunConfig
from lpfl.data import load_corpus
from lpfl.edge_client.lpfl_trainer import lpfl_trainer
from lpfl.errors import ArtefactError, ConfigError
from lpfl.export.config import ExportConfig
from lpfl.harness.launch import (
    free_port,
    prepare_run_dir,
    stop_processes,
    wait_for_port,
    watch_rounds,
)
from lpfl.model.adapters import trainable_state
from lpfl.model.prompt import PromptModel
from lpfl.results import read_document
from lpfl.runtime import ClientRuntime
from lpfl.simulate import fresh_prompt_model
from tests.export_artefacts import MAX_SEQ_LEN, exported
from tests.test_launch import RUN

SETTINGS = {"seed": 3, "local_steps": 4, "batch_size": 4, "lr": 0.01,
            "soft_label_budget": 4, "soft_label_threshold": 0.0, "soft_label_balanced": False}
TEACHER_SETTINGS = {**SETTINGS, "soft_label_teacher_patterns": ["Text: {text}\nVerdict:"],
                    "soft_label_target": "distribution", "soft_label_temperature": 0.5,
                    "soft_label_gold_share": 0.5}
"""A teacher of two patterns (the exported program scores the second one too: a pattern is
text), sharpened targets and half of every batch labeled."""


@pytest.fixture(scope="module")
def artefact() -> tuple[Path, RunConfig]:
    torch.set_num_threads(1)
    folder, manifest, _ = exported("executorch-xnnpack")
    assert [p.role for p in manifest.programs] == ["score", "train"]
    run = ExportConfig(model="tiny-llama", target="executorch-xnnpack", out=folder,
                       max_seq_len=MAX_SEQ_LEN).run_config()
    return folder, run


def _eager(run: RunConfig) -> PromptModel:
    return fresh_prompt_model(run, "lora", seed=0)


LM_SETTINGS = {**SETTINGS, "soft_label_lm_weight": 0.5}


def _client(model: PromptModel | ClientRuntime) -> LocalClient:
    corpus = load_corpus("mr")
    return LocalClient("client-0", 0, model, corpus[:12], corpus[100:120], eval_batch_size=8)


def _global_state(run: RunConfig) -> dict[str, torch.Tensor]:
    """A non-trivial adapter (PEFT starts LoRA B at zero, which would hide a wrong B)."""
    gen = torch.Generator().manual_seed(7)
    return {name: torch.randn(t.shape, generator=gen) * 0.05
            for name, t in trainable_state(_eager(run)).items()}


@pytest.mark.parametrize("settings", [SETTINGS, TEACHER_SETTINGS, LM_SETTINGS],
                         ids=["default", "teacher", "lm-loss"])
def test_program_client_computes_the_eager_round(artefact: tuple[Path, RunConfig],
                                                 settings: dict[str, Any]) -> None:
    folder, run = artefact
    runtime = program_runtime("executorch", folder, "tiny-llama", lambda: _eager(run))
    assert (runtime.backend, runtime.training) == ("executorch", "executorch")
    state = _global_state(run)
    eager = _client(_eager(run)).train_round(1, state, settings)
    program = _client(runtime).train_round(1, state, settings)
    assert program.num_examples == eager.num_examples == 16
    assert program.metrics["soft_labels_added"] == eager.metrics["soft_labels_added"] == 4
    for key in ("gold_share", "teacher_pool_correct", "student_pool_correct"):
        assert program.metrics[key] == eager.metrics[key]
    assert program.metrics["train_loss"] == pytest.approx(eager.metrics["train_loss"], abs=1e-4)
    for name, tensor in eager.state.items():
        torch.testing.assert_close(program.state[name], tensor, atol=1e-4, rtol=1e-3)
    assert any(not torch.equal(program.state[n], state[n]) for n in state)  # it trained


def test_program_client_says_what_it_runs(artefact: tuple[Path, RunConfig]) -> None:
    folder, run = artefact
    caps = _client(program_runtime("executorch", folder, "tiny-llama",
                                   lambda: _eager(run))).capabilities()
    assert (caps["backend"], caps["training"]) == ("executorch", "executorch")
    assert caps["runtime"]["executorch"] and caps["runtime"]["model"] == "tiny-llama"
    assert caps["peak_rss_bytes"] > 0


def test_eager_training_is_chosen_on_request(artefact: tuple[Path, RunConfig]) -> None:
    folder, run = artefact
    built: list[PromptModel] = []

    def eager_model() -> PromptModel:
        built.append(_eager(run))
        return built[-1]

    runtime = program_runtime("executorch", folder, "tiny-llama", eager_model,
                              eager_training=True)
    assert runtime.training == "eager" and len(built) == 1


def test_onnx_backend_scores_with_its_program_and_trains_eagerly() -> None:
    folder, _, _ = exported("onnx")
    run = ExportConfig(model="tiny-llama", target="onnx", out=folder,
                       max_seq_len=MAX_SEQ_LEN).run_config()
    runtime = program_runtime("onnxruntime", folder, "tiny-llama", lambda: _eager(run))
    assert (runtime.backend, runtime.training) == ("onnxruntime", "eager")
    state = _global_state(run)
    eager = _client(_eager(run)).train_round(1, state, TEACHER_SETTINGS)
    onnx = _client(runtime).train_round(1, state, TEACHER_SETTINGS)
    assert onnx.metrics["soft_labels_added"] == eager.metrics["soft_labels_added"]
    assert onnx.metrics["teacher_pool_correct"] == eager.metrics["teacher_pool_correct"]
    for name, tensor in eager.state.items():
        torch.testing.assert_close(onnx.state[name], tensor, atol=1e-4, rtol=1e-3)


def test_a_program_for_another_model_is_refused(artefact: tuple[Path, RunConfig]) -> None:
    folder, run = artefact
    with pytest.raises(ArtefactError, match="model"):
        program_runtime("executorch", folder, "smollm2-135m-instruct-q4_1", lambda: _eager(run))


def test_backend_arguments_are_checked() -> None:
    with pytest.raises(ConfigError, match="--artefact"):
        check_backend("executorch", None)
    with pytest.raises(ConfigError, match="use one of"):
        check_backend("tflite", Path("x"))
    args = argparse.Namespace(config=None, client_id="client-0", backend="onnxruntime",
                              artefact=None, eager_training=False, profile=None)
    with pytest.raises(ConfigError, match="--config"):
        lpfl_trainer(args)


def test_websocket_clients_run_on_exported_programs(tmp_path: Path) -> None:
    """Real `lpfl server` and `lpfl client --backend ...` processes: one client on the ONNX
    program (training eagerly), one on the ExecuTorch programs (training on-device); two rounds,
    both updates aggregated, and the server records each client's backend."""
    onnx_dir, _, _ = exported("onnx")
    et_dir, _, _ = exported("executorch-xnnpack")
    run_file = tmp_path / "run.toml"
    run_file.write_text(RUN)
    out = tmp_path / "run"
    tokens, tokens_file = prepare_run_dir(out, ["client-0", "client-1"])
    port = free_port()
    cli = [sys.executable, "-m", "lpfl.cli"]
    sets = [f"server.port={port}", f"server.run_dir='{out}'", f"server.tokens_file='{tokens_file}'"]
    server = subprocess.Popen([*cli, "server", "--config", str(run_file),
                               *[arg for s in sets for arg in ("--set", s)]],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = [server]
    try:
        wait_for_port(port, server, timeout_s=120)
        for cid, backend, folder in (("client-0", "onnxruntime", onnx_dir),
                                     ("client-1", "executorch", et_dir)):
            with (out / f"{cid}.log").open("wb") as log:
                procs.append(subprocess.Popen(
                    [*cli, "client", "--server", f"ws://127.0.0.1:{port}", "--client-id", cid,
                     "--config", str(run_file), "--backend", backend, "--artefact", str(folder)],
                    stdout=log, stderr=subprocess.STDOUT,
                    env={**os.environ, "LPFL_TOKEN": tokens[cid]}))
        watch_rounds(server, out / "results.json", 2, timeout_s=300)
    finally:
        stop_processes(procs)
    rounds = read_document(out / "results.json")["runs"][0]["records"]
    assert [r["round"] for r in rounds] == [1, 2]
    for record in rounds:
        clients = {c["client_id"]: c for c in record["clients"]}
        assert {cid: c["status"] for cid, c in clients.items()} == {
            "client-0": "updated", "client-1": "updated"}
        caps = {cid: (c["capabilities"]["backend"], c["capabilities"]["training"])
                for cid, c in clients.items()}
        assert caps == {"client-0": ("onnxruntime", "eager"),
                        "client-1": ("executorch", "executorch")}


def test_the_language_model_loss_changes_training_but_not_the_batches(
        artefact: tuple[Path, RunConfig]) -> None:
    _, run = artefact
    state = _global_state(run)
    plain = _client(_eager(run)).train_round(1, state, SETTINGS)
    with_lm = _client(_eager(run)).train_round(1, state, LM_SETTINGS)
    assert with_lm.metrics["gold_share"] == plain.metrics["gold_share"]
    assert any(not torch.equal(with_lm.state[n], plain.state[n]) for n in state)
