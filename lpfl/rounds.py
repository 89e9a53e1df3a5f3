"""A whole federation driven through the server's round machine, without the websocket server.

:func:`drive` plays the websocket server and every client around a
:class:`~lpfl.protocol.RoundMachine`. Every client is connected before the first round (so
sampling sees them all, whatever ``min_clients`` says); each task's global state is decoded from
the payload the machine encoded (``task_encoding``); each client's reply is encoded in
``update_encoding`` and handed to the machine as an update message; every closed round is
evaluated and the evaluation reported back before the machine's verdict is recorded.
Validation, clipping, the aggregation rule and both guards are therefore exactly the server's,
and the simulation (:mod:`lpfl.simulate`) and the robustness benchmark run them as a server
would.

The clients are a :class:`Fleet`: trainers in this process (:class:`InProcess`, what
``lpfl simulate`` uses) or nodes behind another transport (the Flower app's). The fleet answers
every task before the machine moves on, so deadlines never pass. An in-process trainer that raises
stops the run (in one process it is a bug, not a flaky device); an error a fleet reports counts
as that client's failed reply, as does an update the machine refuses, and a run whose rounds
keep failing raises :class:`RunAborted`.

With secure aggregation the driver also plays each in-process client's side of the masking
(:class:`lpfl.secagg.MaskingClient`): the machine sees only keys, sealed shares and masked
inputs, as a websocket server would. A fleet behind another transport hands the driver plain
updates, so secure aggregation runs only with :class:`InProcess` trainers.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from lpfl import protocol, wire
from lpfl.errors import ConfigError, LpflError
from lpfl.records import RoundRecord, Traffic
from lpfl.secagg import MaskingClient
from lpfl.strategy import FedAvg
from lpfl.tensors import decode_tensors, encode_tensors
from lpfl.trainer_api import Trainer, TrainResult

Evaluate = Callable[[int, Mapping[str, torch.Tensor]], Mapping[str, float]]
"""``evaluate(round, state)``: metrics of a closed round's state (``accuracy`` when the rules
set ``max_accuracy_drop``); an empty mapping skips evaluating that round."""


class RunAborted(LpflError):
    """The machine gave up: a round got fewer than ``min_updates`` accepted updates too often."""


@dataclass(frozen=True)
class DrivenRound:
    """One recorded round: the machine's verdict (whose outcomes hold each sampled client's
    metrics and number of examples, but not its state, already folded in: an FP-FL state is
    hundreds of MB), the payload bytes each client's task and reply carried, and the seconds
    from the round's first task to its verdict."""

    committed: protocol.RoundCommitted
    traffic: Mapping[str, Traffic]
    seconds: float

    def record(self) -> RoundRecord:
        """The round's record, as the websocket server would keep it (payload bytes only)."""
        return self.committed.record(self.traffic, self.seconds)


TaskOutcome = TrainResult | protocol.ClientFailed | protocol.ClientRefused
"""A client's answer to a task: its trained update, its report that training failed, or the
transport's refusal of what came back (e.g. ``timeout`` for no reply in time)."""


class Fleet(Protocol):
    """The clients a run drives: who they are, and how a round's tasks reach them."""

    def members(self) -> Mapping[str, Mapping[str, Any]]:
        """Every client's id and capabilities (what its hello would say)."""
        ...

    def train(self, round_number: int, tasks: Mapping[str, Mapping[str, Any]],
              state: Mapping[str, torch.Tensor]) -> Iterable[tuple[str, TaskOutcome]]:
        """Each client's outcome of its task (client id to task settings), all trained from
        the global ``state``, in the order of ``tasks``; an iterator may train lazily."""
        ...


@dataclass(frozen=True)
class InProcess:
    """Trainers in this process, trained one after another as the outcomes are read, so at
    most one trained state is held at a time; a trainer that raises stops the run."""

    trainers: Mapping[str, Trainer]

    def members(self) -> Mapping[str, Mapping[str, Any]]:
        return {cid: self.trainers[cid].capabilities() for cid in sorted(self.trainers)}

    def train(self, round_number: int, tasks: Mapping[str, Mapping[str, Any]],
              state: Mapping[str, torch.Tensor]) -> Iterator[tuple[str, TaskOutcome]]:
        for cid, settings in tasks.items():
            yield cid, self.trainers[cid].train_round(round_number, dict(state), dict(settings))


def _round_tasks(first: protocol.Send, pending: deque[protocol.Action]
                 ) -> dict[str, wire.Task]:
    """``first``'s task and every task queued right behind it for the same round."""
    assert isinstance(first.message, wire.Task)
    tasks = {first.client_id: first.message}
    while pending:
        following = pending[0]
        if not (isinstance(following, protocol.Send) and isinstance(following.message, wire.Task)
                and following.message.round == first.message.round):
            break
        pending.popleft()
        tasks[following.client_id] = following.message
    return tasks


def drive(strategy: FedAvg, initial_state: Mapping[str, torch.Tensor],
          rules: protocol.RoundRules, rounds: int, clients: Fleet | Mapping[str, Trainer],
          evaluate: Evaluate, on_round: Callable[[DrivenRound], None] = lambda _: None,
          ) -> dict[str, torch.Tensor]:
    """Run ``rounds`` rounds of ``strategy`` from ``initial_state`` under ``rules`` with
    ``clients`` (a :class:`Fleet`, or client ids to trainers run in this process): all of them
    join, the tasks the machine sends together go to the fleet together, every closed round is
    evaluated (and, with ``max_accuracy_drop``, the initial state first, as round 0);
    ``on_round`` sees each recorded round. Returns the final global state; raises
    :class:`RunAborted` if the machine aborts the run."""
    fleet = InProcess(clients) if isinstance(clients, Mapping) else clients
    if rules.privacy.secure_aggregation and not isinstance(fleet, InProcess):
        raise ConfigError("server.round.privacy.secure-aggregation needs the clients to mask "
                          f"their own updates: {type(fleet).__name__} hands plain updates to "
                          "this process; use lpfl's websocket server or in-process trainers")
    members = fleet.members()
    reference = evaluate(0, initial_state) if rules.guards_accuracy else None
    machine = protocol.RoundMachine(strategy, initial_state,
                                    dataclasses.replace(rules, min_clients=len(members)),
                                    rounds, reference_metrics=reference)
    pending: deque[protocol.Action] = deque()
    for cid in sorted(members):
        pending.extend(machine.handle(protocol.ClientJoined(cid, members[cid])))
    traffic: dict[str, Traffic] = {}
    started: float | None = None
    received: tuple[bytes, dict[str, torch.Tensor]] | None = None
    maskers: dict[str, MaskingClient] = {}
    while pending:
        action = pending.popleft()
        match action:
            case protocol.Send(_, wire.Task() as first):
                started = time.perf_counter() if started is None else started
                if received is None or received[0] is not first.tensors:
                    received = first.tensors, decode_tensors(first.tensors)
                tasks = _round_tasks(action, pending)
                settings = {cid: task.settings for cid, task in tasks.items()}
                for cid, outcome in fleet.train(first.round, settings, received[1]):
                    task = tasks[cid]
                    if isinstance(outcome, (protocol.ClientFailed, protocol.ClientRefused)):
                        pending.extend(machine.handle(outcome))
                        continue
                    if task.secure_aggregation is not None:
                        maskers[cid] = MaskingClient(cid, task.round, task.secure_aggregation,
                                                     received[1], outcome.state,
                                                     outcome.num_examples, outcome.metrics)
                        del outcome
                        traffic[cid] = traffic.get(cid, Traffic()) + Traffic(
                            payload_downlink_bytes=len(task.tensors))
                        pending.extend(machine.handle(
                            protocol.SecAggReceived(maskers[cid].advertise())))
                        continue
                    payload = encode_tensors(outcome.state, task.update_encoding)
                    message = wire.Update(task.round, cid, payload, outcome.num_examples,
                                          dict(outcome.metrics))
                    del outcome
                    traffic[cid] = traffic.get(cid, Traffic()) + Traffic(
                        payload_uplink_bytes=len(payload),
                        payload_downlink_bytes=len(task.tensors))
                    pending.extend(machine.handle(protocol.UpdateReceived(message)))
            case protocol.Send(cid, wire.PublicKeys() | wire.ShareKeys() | wire.Unmask() as asked):
                reply = maskers[cid].respond(asked)
                if isinstance(reply, wire.MaskedInput):
                    traffic[cid] = traffic.get(cid, Traffic()) + Traffic(
                        payload_uplink_bytes=len(reply.vector))
                pending.extend(machine.handle(protocol.SecAggReceived(reply)))
            case protocol.RoundClosed(round=number, global_state=state):
                metrics = evaluate(number, state)
                pending.extend(machine.handle(protocol.RoundEvaluated(number, metrics)))
            case protocol.RoundCommitted():
                seconds = time.perf_counter() - (started or time.perf_counter())
                on_round(DrivenRound(action, traffic, seconds))
                traffic, started, received, maskers = {}, None, None, {}
                pending.extend(machine.handle(protocol.RoundRecorded(action.round)))
            case protocol.RunFinished(global_state=state):
                return dict(state)
            case protocol.RunAborted(reason=reason):
                raise RunAborted(reason)
    raise AssertionError("the round machine stopped without finishing or aborting the run")
