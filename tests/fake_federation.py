"""A federation without a model, for the server and client tests.

Each fake client pulls the global state toward its own target (``target = index of the client``),
so FedAvg's result is known exactly. The same pieces run in-process (:func:`run_in_process`) and
as real processes through the real CLIs::

    python -m tests.fake_federation server --config RUN.toml [--resume]
    python -m tests.fake_federation client --server ws://... --client-id c-1 --token T

Environment knob for the client processes: ``FAKE_DELAYS="2:30,3:1.5"`` makes training sleep
30 s in round 2 and 1.5 s in round 3 (tests use it to catch a process mid-round).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lpfl.config import RunConfig
from lpfl.edge_client import cli as client_cli
from lpfl.edge_client.connection import ClientSettings, EdgeClient
from lpfl.protocol import RoundRules
from lpfl.results import JsonResultsWriter
from lpfl.rounds import drive
from lpfl.server import cli as server_cli
from lpfl.server.app import AggregatorServer, Evaluate, RunOutcome
from lpfl.server.background_eval import BackgroundEvaluator
from lpfl.strategy import ClientUpdate, FedAvg
from lpfl.tokens import make_tokens
from lpfl.trainer_api import device_capabilities
from lpfl.transport import ServerSettings

SHAPES = {"layer.lora_A": (4, 8), "layer.lora_B": (8, 4), "head.bias": (3,)}


def initial_state() -> dict[str, torch.Tensor]:
    return {name: torch.zeros(shape) for name, shape in SHAPES.items()}


def round_settings(round_number: int) -> dict[str, Any]:
    return {"lr": 0.5, "round": round_number}


def client_index(client_id: str) -> int:
    return int(client_id.rsplit("-", 1)[-1])


@dataclass
class FakeTrainer:
    """Moves every tensor ``lr`` of the way to the client's index; weight ``10 + index``.

    ``delays`` maps rounds to seconds of sleep before training; ``gate``, when given, is waited on
    before each round (tests use both to hold a round open); ``fail_rounds`` raise instead.
    """

    client_id: str
    delays: Mapping[int, float] = field(default_factory=dict)
    gate: threading.Event | None = None
    fail_rounds: frozenset[int] = frozenset()
    rounds: list[int] = field(default_factory=list)

    def capabilities(self) -> dict[str, Any]:
        return dict(device_capabilities("fake"))

    def train_round(self, round_number: int, global_state: dict[str, torch.Tensor],
                    settings: dict[str, Any]) -> ClientUpdate:
        if self.gate is not None:
            self.gate.wait(timeout=30)
        time.sleep(self.delays.get(round_number, 0.0))
        if round_number in self.fail_rounds:
            raise RuntimeError(f"fake failure in round {round_number}")
        self.rounds.append(round_number)
        target = float(client_index(self.client_id))
        lr = float(settings["lr"])
        state = {k: v + lr * (target - v) for k, v in global_state.items()}
        first = next(iter(global_state.values())).flatten()[0]
        return ClientUpdate(self.client_id, state, 10 + client_index(self.client_id),
                            {"train_loss": float(abs(target - first))})


def evaluate(round_number: int, state: Mapping[str, torch.Tensor]) -> dict[str, float]:
    return {"mean": float(torch.cat([t.flatten() for t in state.values()]).mean())}


def strategy(clients_per_round: int, seed: int = 0) -> FedAvg:
    return FedAvg(clients_per_round, seed, round_settings)


def reference_state(client_ids: Sequence[str], rounds: int, clients_per_round: int,
                    **round_rules: Any) -> dict[str, torch.Tensor]:
    """The final global state of the same run done in process, through the server's round
    machine under the same rules (:func:`lpfl.rounds.drive`, as ``lpfl simulate`` does)."""
    trainers = {cid: FakeTrainer(cid) for cid in client_ids}
    return drive(strategy(clients_per_round), initial_state(), RoundRules(**round_rules), rounds,
                 trainers, evaluate)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_run(folder: Path, client_ids: Sequence[str], *, rounds: int, clients_per_round: int,
              **round_rules: Any) -> tuple[Path, dict[str, str]]:
    """A RUN.toml and tokens.json in ``folder`` for a fake run; returns the file and tokens."""
    tokens = make_tokens(client_ids)
    (folder / "tokens.json").write_text(json.dumps(tokens))
    rules = "\n".join(f"{k.replace('_', '-')} = {json.dumps(v)}" for k, v in round_rules.items())
    (folder / "run.toml").write_text(
        f"[data]\nnum_clients = {len(client_ids)}\n"
        f"[federation]\nrounds = {rounds}\nclients_per_round = {clients_per_round}\n"
        f'[server]\nhost = "127.0.0.1"\n'
        f'run-dir = "{folder / "server"}"\ntokens-file = "{folder / "tokens.json"}"\n'
        f"[server.round]\n{rules}\n")
    return folder / "run.toml", tokens


def server_parts(config: RunConfig) -> server_cli.ServerParts:
    return server_cli.ServerParts(strategy(config.federation.clients_per_round), initial_state(),
                                  evaluate)


def fake_trainer(args: argparse.Namespace) -> FakeTrainer:
    pairs = [item.split(":") for item in os.environ.get("FAKE_DELAYS", "").split(",") if item]
    return FakeTrainer(args.client_id, {int(r): float(s) for r, s in pairs})


@dataclass
class InProcessRun:
    """A server and its clients in one event loop; see :func:`run_in_process`."""

    server: AggregatorServer
    outcome: RunOutcome
    client_rounds: dict[str, int | BaseException]


def make_server(folder: Path, tokens: Mapping[str, str], *, rounds: int, clients_per_round: int,
                resume: bool = False, settings: Mapping[str, Any] | None = None,
                initial: Mapping[str, torch.Tensor] | None = None,
                evaluation: Evaluate = evaluate, background: BackgroundEvaluator | None = None,
                **round_rules: Any) -> AggregatorServer:
    """A server on a free port writing into ``folder`` (build it inside a running loop)."""
    options = {"port": 0, "run_dir": str(folder), **(settings or {})}
    server_settings = ServerSettings(round=RoundRules(**round_rules), **options)
    return AggregatorServer(strategy=strategy(clients_per_round),
                            initial_state=initial_state() if initial is None else initial,
                            evaluate=evaluation,
                            results=JsonResultsWriter(folder / "results.json"),
                            settings=server_settings, tokens=tokens, rounds=rounds, resume=resume,
                            background=background)


def client(server: AggregatorServer, cid: str, token: str, trainer: FakeTrainer | None = None,
           scheme: str = "ws", **settings: Any) -> EdgeClient:
    url = f"{scheme}://127.0.0.1:{server.port}"
    options = {"backoff_initial_s": 0.05, "backoff_max_s": 0.2, "give_up_after_s": 10.0,
               **settings}
    return EdgeClient(ClientSettings(url, cid, token, **options), trainer or FakeTrainer(cid),
                      rng=None)


async def run_in_process(folder: Path, client_ids: Sequence[str], *, rounds: int,
                         clients_per_round: int, trainers: Mapping[str, FakeTrainer] | None = None,
                         initial: Mapping[str, torch.Tensor] | None = None,
                         timeout: float = 20.0, evaluation: Evaluate = evaluate,
                         background: BackgroundEvaluator | None = None,
                         **round_rules: Any) -> InProcessRun:
    """Run a whole fake federation in this event loop and return what happened."""
    tokens = make_tokens(client_ids)
    server = make_server(folder, tokens, rounds=rounds, clients_per_round=clients_per_round,
                         initial=initial, evaluation=evaluation, background=background,
                         **round_rules)
    serving = asyncio.create_task(server.run())
    await server.started.wait()
    clients = {cid: asyncio.create_task(
        client(server, cid, tokens[cid], (trainers or {}).get(cid)).run())
        for cid in client_ids}
    outcome = await asyncio.wait_for(serving, timeout)
    results: dict[str, int | BaseException] = {}
    for cid, task in clients.items():
        try:
            results[cid] = await asyncio.wait_for(task, timeout)
        except Exception as exc:
            results[cid] = exc
    return InProcessRun(server, outcome, results)


def main(argv: Sequence[str] | None = None) -> int:
    """The real ``server`` and ``client`` subcommands, wired to the fake model."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(prog="fake_federation")
    sub = parser.add_subparsers(dest="command", required=True)
    server_cli.add_parser(sub)
    client_cli.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "server":
        return int(server_cli.run(args, factory=server_parts))
    return int(client_cli.run(args, trainer_factory=fake_trainer))


if __name__ == "__main__":
    sys.exit(main())
