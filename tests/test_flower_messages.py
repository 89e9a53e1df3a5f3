"""lpfl's tasks, updates and hellos survive Flower's records; bad run configs are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from lpfl.errors import ConfigError
from lpfl.flower.messages import (
    ARRAYS,
    PAYLOAD,
    MessageError,
    hello_content,
    read_hello,
    read_task,
    read_update,
    task_content,
    update_content,
)
from lpfl.flower.run_config import FlowerRun
from lpfl.tensors import decode_tensors, encode_tensors

STATE = {"layer.lora_A.weight": torch.randn(4, 8), "layer.lora_B.weight": torch.zeros(8, 4)}


def test_a_task_carries_lpfls_payload_round_settings_and_update_encoding() -> None:
    settings = {"seed": 3, "lr": 1e-3, "soft_label_teacher_patterns": ["A: {text} B:"]}
    payload = encode_tensors(STATE, "fp16")
    content = task_content(4, payload, settings, "int8")
    task = read_task(content)
    assert (task.round, task.settings, task.update_encoding) == (4, settings, "int8")
    assert task.state.keys() == STATE.keys()
    for name, tensor in decode_tensors(payload).items():
        assert torch.equal(task.state[name], tensor)
    # the payload is carried byte for byte: Flower adds only its framing
    arrays = content[ARRAYS]
    assert isinstance(arrays, ArrayRecord)
    assert arrays[PAYLOAD].numpy().tobytes() == payload


@pytest.mark.parametrize("encoding", ["fp32", "fp16", "int8"])
def test_an_update_carries_the_encoded_state_count_and_metrics(encoding: str) -> None:
    metrics = {"train_loss": 0.25, "soft_labels_added": 12.0}
    update = read_update(update_content(STATE, encoding, 17, metrics))
    assert update.num_examples == 17 and update.metrics == metrics
    expected = decode_tensors(encode_tensors(STATE, encoding))
    assert all(torch.equal(update.state[k], v) for k, v in expected.items())
    with pytest.raises(MessageError, match="num_examples"):
        update_content(STATE, "fp32", 1, {"num_examples": 3.0})


def test_a_hello_names_the_client_and_its_capabilities() -> None:
    caps = {"backend": "eager", "cpu_features": ["avx2"], "memory_bytes": 1 << 30}
    assert read_hello(hello_content("client-2", caps)) == ("client-2", caps)


def test_messages_not_made_by_lpfl_are_refused() -> None:
    foreign = RecordDict({"config": ConfigRecord({"lr": 0.1})})
    for read in (read_task, read_update, read_hello):
        with pytest.raises(MessageError, match="not sent by lpfl"):
            read(foreign)


def test_the_run_config_names_a_run_file_and_a_federated_method(tmp_path: Path) -> None:
    run = FlowerRun.from_run_config({"config": "run.toml", "seed": 2, "method": "fp-fl"})
    assert (run.config, run.seed, run.method) == (Path("run.toml"), 2, "fp-fl")
    with pytest.raises(ConfigError, match="needs config="):
        FlowerRun.from_run_config({"method": "lp-fl"})
    with pytest.raises(ConfigError, match=r"unknown keys \['rounds'\]"):
        FlowerRun.from_run_config({"config": "run.toml", "rounds": 3})
    with pytest.raises(ConfigError, match="federated method"):
        FlowerRun.from_run_config({"config": "run.toml", "method": "centralized"})
    with pytest.raises(ConfigError, match="unknown method"):
        FlowerRun.from_run_config({"config": "run.toml", "method": "fedprox"})
    with pytest.raises(ConfigError, match="no such run file"):
        FlowerRun(config=tmp_path / "missing.toml").load()


def test_the_command_offers_every_launch_mode() -> None:
    from lpfl.flower.cli import MODES
    from lpfl.flower.launch import Mode

    assert tuple(m.value for m in Mode) == MODES
