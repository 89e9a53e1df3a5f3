"""Real processes on loopback: ``server`` and ``client`` subcommands with the fake trainer, and
kill -9 of a client mid-round and of the server mid-run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from lpfl.results import read_document
from lpfl.server.checkpoint import load_checkpoint
from tests import fake_federation as ff

ROOT = Path(__file__).resolve().parent.parent
IDS = ["c-1", "c-2", "c-3"]


class Processes:
    """Starts ``python -m tests.fake_federation ...`` processes, logging to files; kills any
    still running at the end of the test."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str, delays: str = "",
              token: str = "") -> subprocess.Popen[bytes]:
        env = {**os.environ, "FAKE_DELAYS": delays, "LPFL_TOKEN": token}
        log = (self.folder / f"{name}.log").open("ab")
        process = subprocess.Popen([sys.executable, "-m", "tests.fake_federation", *args],
                                   cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.running[name] = process
        return process

    def server(self, config: Path, *extra: str, port: int = 0) -> int:
        """Start the server (on a free port unless ``port`` is given) and return its port once
        it listens."""
        announced = re.compile(r"serving ws://127\.0\.0\.1:(\d+)")
        log = self.folder / "server.log"
        before = len(announced.findall(log.read_text())) if log.exists() else 0
        self.start("server", "server", "--config", str(config), "--port", str(port), *extra)
        self.wait_for(lambda: len(announced.findall(self.log("server"))) > before,
                      "the server to listen")
        return int(announced.findall(self.log("server"))[-1])

    def clients(self, port: int, tokens: dict[str, str], delays: str = "") -> None:
        for cid, token in tokens.items():
            self.start(cid, "client", "--server", f"ws://127.0.0.1:{port}", "--client-id", cid,
                       "--give-up-after-s", "60", "--backoff-max-s", "0.5", delays=delays,
                       token=token)  # the token travels in $LPFL_TOKEN

    def wait(self, name: str, timeout: float = 90) -> int:
        try:
            return self.running[name].wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{name} did not exit:\n{self.log(name)}")

    def kill(self, name: str) -> None:
        self.running[name].send_signal(signal.SIGKILL)
        self.running[name].wait(10)

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")[-4000:]

    def logged(self, name: str, text: str) -> bool:
        return text in (self.folder / f"{name}.log").read_text(errors="replace")

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}; server log:\n{self.log('server')}")
            time.sleep(0.05)

    def stop_all(self) -> None:
        for process in self.running.values():
            if process.poll() is None:
                process.kill()
                process.wait(10)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    launched = Processes(tmp_path)
    yield launched
    launched.stop_all()


def recorded_rounds(folder: Path) -> list[int]:
    try:
        return [r["round"] for r in read_document(folder / "results.json")["runs"][0]["records"]]
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def assert_final_state(folder: Path, rounds: int, clients_per_round: int) -> None:
    checkpoint = load_checkpoint(folder / "checkpoint.safetensors")
    assert checkpoint.round == rounds
    expected = ff.reference_state(IDS, rounds, clients_per_round)
    for name, tensor in expected.items():
        torch.testing.assert_close(checkpoint.global_state[name], tensor)


def test_client_processes_reach_the_in_process_fedavg_result(
    tmp_path: Path, processes: Processes,
) -> None:
    # Default rules: these clients' targets differ enough for the adaptive bound to clip some
    # honest updates, and the in-process reference clips them the same way.
    config, tokens = ff.write_run(tmp_path, IDS, rounds=3, clients_per_round=2, min_clients=3)
    port = processes.server(config)
    processes.clients(port, tokens)
    assert processes.wait("server") == 0, processes.log("server")
    for cid in IDS:
        assert processes.wait(cid) == 0, processes.log(cid)
    assert_final_state(tmp_path / "server", rounds=3, clients_per_round=2)
    assert recorded_rounds(tmp_path / "server") == [1, 2, 3]


def test_round_completes_when_a_client_is_killed_mid_round_and_it_rejoins_later(
    tmp_path: Path, processes: Processes,
) -> None:
    config, tokens = ff.write_run(tmp_path, IDS, rounds=3, clients_per_round=3, min_clients=3,
                                  min_updates=2)
    port = processes.server(config)
    processes.clients(port, {cid: tokens[cid] for cid in ("c-1", "c-2")})
    processes.clients(port, {"c-3": tokens["c-3"]}, delays="2:60")  # stuck in round 2
    run_dir = tmp_path / "server"
    processes.wait_for(lambda: processes.logged("server", "round 2 (attempt 1) starts"),
                       "round 2")
    processes.kill("c-3")
    processes.wait_for(lambda: recorded_rounds(run_dir) == [1, 2], "round 2 to be recorded")
    processes.clients(port, {"c-3": tokens["c-3"]})  # round 3 waits for it (min-clients = 3)
    assert processes.wait("server") == 0, processes.log("server")
    results = read_document(run_dir / "results.json")["runs"][0]["records"]
    assert [r["round"] for r in results] == [1, 2, 3]
    second = {c["client_id"]: c["status"] for c in results[1]["clients"]}
    assert second == {"c-1": "updated", "c-2": "updated", "c-3": "dropped"}
    assert {c["status"] for c in results[2]["clients"]} == {"updated"}
    for cid in IDS:
        assert processes.wait(cid) == 0, processes.log(cid)


def test_killed_server_resumes_and_no_completed_round_is_lost(
    tmp_path: Path, processes: Processes,
) -> None:
    config, tokens = ff.write_run(tmp_path, IDS, rounds=4, clients_per_round=2, min_clients=3)
    port = processes.server(config)
    processes.clients(port, tokens, delays="3:1.5")
    run_dir = tmp_path / "server"
    processes.wait_for(lambda: processes.logged("server", "round 3 (attempt 1) starts"),
                       "round 3")
    processes.kill("server")  # while every client is training round 3
    before = recorded_rounds(run_dir)
    assert before in ([1, 2], [1, 2, 3])
    processes.server(config, "--resume", port=port)
    assert processes.wait("server") == 0, processes.log("server")
    assert recorded_rounds(run_dir) == [1, 2, 3, 4]
    assert_final_state(run_dir, rounds=4, clients_per_round=2)
    for cid in IDS:
        assert processes.wait(cid) == 0, processes.log(cid)
