"""The Flower ServerApp: lpfl's round machine, with Flower carrying tasks and updates.

It waits for the run's ``data.num_clients`` nodes, asks each who it is (a hello query: its lpfl
client id and capabilities), then runs :func:`lpfl.simulate.federate` with a :class:`FlowerFleet`
in place of in-process clients: each round's tasks go out as Flower train messages at once and
the replies come back into the machine in task order. States travel in the run's task and
update encodings, as lpfl payloads (:mod:`lpfl.flower.messages`). Sampling, validation, clipping,
aggregation, guards, evaluation and the results file are those of ``lpfl simulate``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import torch
from flwr.app import Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from safetensors.torch import save_file

from lpfl import wire
from lpfl.adapter_folder import save_final_state
from lpfl.errors import LpflError
from lpfl.flower.messages import MessageError, read_hello, read_update, task_content
from lpfl.flower.run_config import FlowerRun, final_state_path
from lpfl.protocol import ClientFailed, ClientRefused, RoundRules
from lpfl.report import write_report
from lpfl.results import ResultsFile
from lpfl.rounds import TaskOutcome
from lpfl.simulate import federate, federated_data
from lpfl.tensors import PayloadError, encode_tensors

log = logging.getLogger(__name__)

app = ServerApp()


class FleetError(LpflError):
    """The Flower federation is not the one the run file describes."""


def wait_for_nodes(grid: Grid, count: int, timeout_s: float) -> list[int]:
    """The ids of ``count`` connected nodes, waiting up to ``timeout_s`` for them."""
    deadline = time.monotonic() + timeout_s
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= count:
            return nodes
        if time.monotonic() > deadline:
            raise FleetError(f"{len(nodes)} of the run file's {count} clients (data.num_clients)"
                             f" connected within {timeout_s:.0f} s")
        time.sleep(0.5)


class FlowerFleet:
    """The run's clients behind Flower nodes: :class:`lpfl.rounds.Fleet` over a Grid."""

    def __init__(self, grid: Grid, expected: int, timeout_s: float,
                 rules: RoundRules) -> None:
        self.grid = grid
        self.timeout_s = timeout_s
        self.rules = rules
        nodes = wait_for_nodes(grid, expected, timeout_s)
        queries = [Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY)
                   for node in nodes]
        self.nodes: dict[str, int] = {}
        self.capabilities: dict[str, dict[str, Any]] = {}
        for reply in grid.send_and_receive(queries, timeout=timeout_s):
            if reply.has_error():
                raise FleetError(f"node {reply.metadata.src_node_id} failed its hello: "
                                 f"{reply.error.reason}")
            client_id, caps = read_hello(reply.content)
            if client_id in self.nodes:
                raise FleetError(f"two nodes say they are {client_id}: give each SuperNode its "
                                 "own partition-id")
            self.nodes[client_id] = reply.metadata.src_node_id
            self.capabilities[client_id] = caps
        if len(self.nodes) != expected:
            raise FleetError(f"{len(self.nodes)} of {expected} nodes answered the hello within "
                             f"{timeout_s:.0f} s")

    def members(self) -> Mapping[str, Mapping[str, Any]]:
        return self.capabilities

    def train(self, round_number: int, tasks: Mapping[str, Mapping[str, Any]],
              state: Mapping[str, torch.Tensor]) -> list[tuple[str, TaskOutcome]]:
        """Send every task of the round at once; each client's update, its failure, or a
        refusal of a reply that was malformed or did not come within the timeout."""
        payload = encode_tensors(state, self.rules.task_encoding)
        messages = [Message(task_content(round_number, payload, settings,
                                         self.rules.update_encoding),
                            dst_node_id=self.nodes[cid], message_type=MessageType.TRAIN)
                    for cid, settings in tasks.items()]
        replies = {r.metadata.src_node_id: r
                   for r in self.grid.send_and_receive(messages, timeout=self.timeout_s)}
        return [(cid, self._outcome(round_number, cid, replies.get(self.nodes[cid])))
                for cid in tasks]

    def _outcome(self, round_number: int, cid: str, reply: Message | None) -> TaskOutcome:
        if reply is None:
            return ClientRefused(cid, wire.E_TIMEOUT, f"no reply within {self.timeout_s:.0f} s")
        if reply.has_error():
            reason = reply.error.reason or f"the ClientApp failed (code {reply.error.code})"
            return ClientFailed(wire.Error.of(round_number, cid, wire.E_TRAINING_FAILED, reason))
        try:
            return read_update(reply.content)
        except (MessageError, PayloadError) as error:
            return ClientRefused(cid, wire.E_BAD_MESSAGE, str(error))


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the run file's method for its seed over the connected nodes; write the results."""
    flower_run = FlowerRun.from_run_config(context.run_config)
    config, rules = flower_run.load()
    torch.set_num_threads(config.run.threads)
    fleet = FlowerFleet(grid, config.data.num_clients, flower_run.node_timeout_s, rules)
    data = federated_data(config, flower_run.seed)
    run, state = federate(config, flower_run.method, flower_run.seed, data, rules=rules,
                          fleet=fleet)
    run.update(transport="flower", capabilities=fleet.capabilities)
    flower_run.out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(final_state_path(flower_run)))
    folder = flower_run.out / "adapters" / f"{flower_run.method}-seed{flower_run.seed}"
    log.info("%s", save_final_state(folder, config, flower_run.method, flower_run.seed, state))
    results = ResultsFile(flower_run.out / "results.json", config.to_dict())
    results.require_same_config()
    results.add(run)
    log.info("wrote %s and %s", results.path, write_report(flower_run.out))
