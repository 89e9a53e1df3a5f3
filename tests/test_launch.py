"""A real websocket federation (server + client processes, tiny Llama) equals the simulation."""

import tomllib
from pathlib import Path

import torch

from lpfl.adapter_folder import read_adapter_state
from lpfl.config import config_from_dict
from lpfl.harness.launch import launch
from lpfl.server.checkpoint import load_checkpoint
from lpfl.simulate import federate, federated_data

RUN = """
[model]
source = "tiny-llama"
max_length = 48
[data]
test_size = 100
validation_size = 0
shots_per_class = 8
unlabeled_per_client = 16
num_clients = 2
[federation]
rounds = 2
clients_per_round = 2
local_steps = 2
batch_size = 4
lr = 0.01
[soft_labels]
threshold = 0.5
growth = 4
start_round = 2
[run]
methods = ["lp-fl"]
eval_batch_size = 64
"""


def test_processes_over_websockets_reach_the_simulated_global_adapter(tmp_path: Path) -> None:
    run_file = tmp_path / "run.toml"
    run_file.write_text(RUN)
    report = launch(run_file, clients=2, out=tmp_path / "out", timeout_s=240)
    served = load_checkpoint(tmp_path / "out" / "checkpoint.safetensors")
    assert served.round == 2

    config = config_from_dict(tomllib.loads(RUN))
    record, simulated = federate(config, "lp-fl", 0, federated_data(config, 0), lambda _: None)
    assert set(served.global_state) == set(simulated)
    for name, tensor in simulated.items():
        torch.testing.assert_close(served.global_state[name], tensor, atol=1e-5, rtol=1e-4)
    assert record["rounds"][-1]["soft_labels_added"] > 0
    kept = read_adapter_state(tmp_path / "out" / "adapter")  # the run's result, as PEFT keeps it
    assert set(kept) == set(served.global_state)
    for name, tensor in served.global_state.items():
        torch.testing.assert_close(kept[name], tensor)
    text = report.read_text()
    assert "FP-FL would send" in text and "| 2 |" in text
    assert (tmp_path / "out" / "report.png").stat().st_size > 0
