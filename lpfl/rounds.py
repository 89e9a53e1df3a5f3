"""A whole federation in one process, through the server's round machine: no sockets, no clock.

:func:`drive` plays the websocket server and every client around a
:class:`~lpfl.protocol.RoundMachine`. Every client is connected before the first round (so
sampling sees them all, whatever ``min_clients`` says); each task's global state is decoded from
the payload the machine encoded (``task_encoding``); each client's reply is encoded in
``update_encoding`` and handed to the machine as an update message; every closed round is
evaluated and the evaluation reported back before the machine's verdict is recorded.
Validation, clipping, the aggregation rule and both guards are therefore exactly the server's,
and the simulation (:mod:`lpfl.simulate`) and the robustness benchmark run them as a server
would.

Every client answers every task at once, so deadlines never pass. A client that raises stops
the run (in one process it is a bug, not a flaky device); an update the machine refuses counts
as that client's reply, and a run whose rounds keep failing raises :class:`RunAborted`.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from lpfl import protocol, wire
from lpfl.errors import LpflError
from lpfl.records import RoundRecord, Traffic
from lpfl.strategy import FedAvg
from lpfl.tensors import decode_tensors, encode_tensors
from lpfl.trainer_api import Trainer

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


def drive(strategy: FedAvg, initial_state: Mapping[str, torch.Tensor],
          rules: protocol.RoundRules, rounds: int, clients: Mapping[str, Trainer],
          evaluate: Evaluate, on_round: Callable[[DrivenRound], None] = lambda _: None,
          ) -> dict[str, torch.Tensor]:
    """Run ``rounds`` rounds of ``strategy`` from ``initial_state`` under ``rules`` with
    ``clients`` (client id to trainer): all of them join, every task is trained at once, every
    closed round is evaluated (and, with ``max_accuracy_drop``, the initial state first, as
    round 0); ``on_round`` sees each recorded round. Returns the final global state; raises
    :class:`RunAborted` if the machine aborts the run."""
    reference = evaluate(0, initial_state) if rules.guards_accuracy else None
    machine = protocol.RoundMachine(strategy, initial_state,
                                    dataclasses.replace(rules, min_clients=len(clients)),
                                    rounds, reference_metrics=reference)
    pending: deque[protocol.Action] = deque()
    for cid in sorted(clients):
        pending.extend(machine.handle(protocol.ClientJoined(cid, clients[cid].capabilities())))
    traffic: dict[str, Traffic] = {}
    started: float | None = None
    received: tuple[bytes, dict[str, torch.Tensor]] | None = None
    while pending:
        action = pending.popleft()
        match action:
            case protocol.Send(cid, wire.Task() as task):
                started = time.perf_counter() if started is None else started
                if received is None or received[0] is not task.tensors:
                    received = task.tensors, decode_tensors(task.tensors)
                reply = clients[cid].train_round(task.round, dict(received[1]),
                                                 dict(task.settings))
                payload = encode_tensors(reply.state, task.update_encoding)
                message = wire.Update(task.round, cid, payload, reply.num_examples,
                                      dict(reply.metrics))
                del reply
                traffic[cid] = traffic.get(cid, Traffic()) + Traffic(
                    payload_uplink_bytes=len(payload), payload_downlink_bytes=len(task.tensors))
                pending.extend(machine.handle(protocol.UpdateReceived(message)))
            case protocol.RoundClosed(round=number, global_state=state):
                metrics = evaluate(number, state)
                pending.extend(machine.handle(protocol.RoundEvaluated(number, metrics)))
            case protocol.RoundCommitted():
                seconds = time.perf_counter() - (started or time.perf_counter())
                on_round(DrivenRound(action, traffic, seconds))
                traffic, started, received = {}, None, None
                pending.extend(machine.handle(protocol.RoundRecorded(action.round)))
            case protocol.RunFinished(global_state=state):
                return dict(state)
            case protocol.RunAborted(reason=reason):
                raise RunAborted(reason)
    raise AssertionError("the round machine stopped without finishing or aborting the run")
