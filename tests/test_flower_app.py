"""The lpfl Flower App, run by real Flower processes: a SuperLink with the simulation engine, or
a SuperLink and SuperNodes on loopback, driven by ``flwr run``."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lpfl.errors import ConfigError
from lpfl.flower.launch import FlowerLaunch, LaunchError, Mode, launch_flower
from lpfl.simulate import federate, federated_data
from lpfl.transport import load_server_config
from tests.conftest import write_run_file
from tests.export_artefacts import exported


def run_file(folder: Path, dataset: str = "mr", update_encoding: str = "fp32") -> Path:
    """The tiny test run, with soft labels from round 2 at any confidence and the update
    encoding of the server's round rules."""
    rules: dict[str, dict[str, object]] = {"server.round": {"update_encoding": update_encoding}}
    return write_run_file(folder / "run.toml", dataset,
                          soft_labels={"threshold": 0.0, "growth": 4, "start_round": 2}, **rules)


def test_a_flower_simulation_ends_with_the_adapter_lpfl_simulate_computes(tmp_path: Path) -> None:
    path = run_file(tmp_path, update_encoding="int8")  # updates travel int8, as on websockets
    out = launch_flower(FlowerLaunch(path, Mode.SIMULATION, 2, tmp_path / "flower",
                                     timeout_s=300, node_timeout_s=120))
    flower_state = load_file(str(out / "lp-fl-seed0.safetensors"))
    config, server = load_server_config(path)
    record, state = federate(config, "lp-fl", 0, federated_data(config, 0), lambda _: None,
                             server.round)
    assert flower_state.keys() == state.keys()
    for name, tensor in state.items():
        torch.testing.assert_close(flower_state[name], tensor, atol=1e-6, rtol=0)
    (run,) = json.loads((out / "results.json").read_text())["runs"]
    assert (run["transport"], run["update_encoding"]) == ("flower", "int8")
    assert [r["uplink_bytes"] for r in run["rounds"]] == [
        r["uplink_bytes"] for r in record["rounds"]]
    assert [r["clients"] for r in run["rounds"]] == [["client-0", "client-1"]] * 2
    assert run["rounds"][1]["soft_labels_added"] == record["rounds"][1]["soft_labels_added"] > 0
    assert run["final_accuracy"] == record["final_accuracy"]
    assert (out / "report.md").is_file()
    kept = load_file(str(out / "adapters" / "lp-fl-seed0" / "adapter_model.safetensors"))
    assert len(kept) == len(state)  # the PEFT adapter folder every run keeps


def _port_closed(log: Path) -> bool:
    """Whether the SuperLink whose log this is no longer listens."""
    text = log.read_text(errors="replace")
    port = int(text.split("Starting the SuperLink Fleet HTTP API on 127.0.0.1:")[1].split(".")[0])
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def test_supernodes_on_executorch_programs_train_lpfl_simulates_rounds_over_tls_and_stop(
        tmp_path: Path) -> None:
    """A deployment: a SuperLink and two SuperNode processes, over TLS, whose rounds run on the
    exported ExecuTorch score and training programs; the adapter is the eager simulation's."""
    torch.set_num_threads(1)
    artefact, _, _ = exported("executorch-xnnpack")
    path = run_file(tmp_path)
    out = launch_flower(FlowerLaunch(path, Mode.DEPLOYMENT, 2, tmp_path / "deploy",
                                     timeout_s=300, node_timeout_s=120, backend="executorch",
                                     artefact=artefact))
    (run,) = json.loads((out / "results.json").read_text())["runs"]
    assert [r["round"] for r in run["rounds"]] == [1, 2]
    assert all(r["clients"] == ["client-0", "client-1"] for r in run["rounds"])
    assert all(r["uplink_bytes"] > 0 for r in run["rounds"])
    config, server = load_server_config(path)
    record, state = federate(config, "lp-fl", 0, federated_data(config, 0), lambda _: None,
                             server.round)
    flower_state = load_file(str(out / "lp-fl-seed0.safetensors"))
    for name, tensor in state.items():
        torch.testing.assert_close(flower_state[name], tensor, atol=1e-3, rtol=1e-2)
    assert run["rounds"][1]["soft_labels_added"] == record["rounds"][1]["soft_labels_added"]
    for caps in run["capabilities"].values():
        assert (caps["backend"], caps["training"]) == ("executorch", "executorch")
    logs = out / "logs"
    assert {p.name for p in logs.iterdir()} >= {"superlink.log", "supernode-0.log",
                                                 "supernode-1.log", "flwr-run.log"}
    # TLS by default: the SuperLink served the run's own certificate, not plain HTTP
    assert (out / "flower-home" / "tls" / "cert.pem").is_file()
    link_log = (logs / "superlink.log").read_text()
    assert "insecure" not in link_log.lower()
    # node authentication: each SuperNode's key was registered and the SuperLink checks them
    assert "authentication is disabled" not in link_log
    assert all("registered successfully" in (logs / f"register-{i}.log").read_text()
               for i in range(2))
    assert _port_closed(logs / "superlink.log")


def test_a_failed_server_app_is_reported_with_its_cause(tmp_path: Path) -> None:
    path = run_file(tmp_path, dataset=str(tmp_path / "missing.csv"))
    with pytest.raises(LaunchError, match=r"missing\.csv"):
        launch_flower(FlowerLaunch(path, Mode.SIMULATION, 2, tmp_path / "failed",
                                   timeout_s=300, node_timeout_s=60))


def test_launches_that_cannot_work_are_refused_before_starting_anything(tmp_path: Path) -> None:
    path = run_file(tmp_path)
    with pytest.raises(ConfigError, match=r"data\.num_clients = 2"):
        FlowerLaunch(path, Mode.DEPLOYMENT, 3, tmp_path / "x")
    with pytest.raises(ConfigError, match="federated method"):
        FlowerLaunch(path, Mode.SIMULATION, 2, tmp_path / "x", method="centralized")
    with pytest.raises(ConfigError, match="no such run file"):
        FlowerLaunch(tmp_path / "nope.toml", Mode.SIMULATION, 2, tmp_path / "x")
    with pytest.raises(ConfigError, match="deployment"):
        FlowerLaunch(path, Mode.SIMULATION, 2, tmp_path / "x", backend="executorch",
                     artefact=tmp_path)
    with pytest.raises(ConfigError, match="--artefact"):
        FlowerLaunch(path, Mode.DEPLOYMENT, 2, tmp_path / "x", backend="onnxruntime")
    assert not (tmp_path / "x").exists()
