"""lpfl's hello, task and update as Flower message contents.

A task carries the global state as an ``ArrayRecord`` (``arrays``) and the round number and
:class:`~lpfl.task.TaskSettings` wire form as JSON in a ``ConfigRecord`` (``task``); an update
carries the trained state back (``arrays``) with the number of training examples and the
client's metrics in a ``MetricRecord`` (``metrics``). A hello (a Flower *query* message) asks a
node for its lpfl client id and capabilities.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from lpfl.errors import LpflError

ARRAYS = "arrays"
TASK = "task"
METRICS = "metrics"
HELLO = "hello"
NUM_EXAMPLES = "num_examples"


class MessageError(LpflError):
    """A Flower message lacks what lpfl puts in it."""


def _record(content: RecordDict, key: str, kind: type) -> Any:
    if key not in content or not isinstance(content[key], kind):
        raise MessageError(f"the Flower message has no {kind.__name__} {key!r}: it was not sent "
                           "by lpfl's Flower app")
    return content[key]


def hello_content(client_id: str, capabilities: Mapping[str, Any]) -> RecordDict:
    return RecordDict({HELLO: ConfigRecord({"client_id": client_id,
                                            "capabilities": json.dumps(capabilities)})})


def read_hello(content: RecordDict) -> tuple[str, dict[str, Any]]:
    """A node's lpfl client id and capabilities from its hello reply's content."""
    record = _record(content, HELLO, ConfigRecord)
    return str(record["client_id"]), dict(json.loads(str(record["capabilities"])))


def task_content(round_number: int, state: Mapping[str, torch.Tensor],
                 settings: Mapping[str, Any]) -> RecordDict:
    return RecordDict({ARRAYS: ArrayRecord({k: v.detach().cpu() for k, v in state.items()}),
                       TASK: ConfigRecord({"round": round_number,
                                           "settings": json.dumps(dict(settings))})})


def read_task(content: RecordDict) -> tuple[int, dict[str, torch.Tensor], dict[str, Any]]:
    """Round number, global state and task settings (wire form) of a task message's
    content."""
    task = _record(content, TASK, ConfigRecord)
    arrays = _record(content, ARRAYS, ArrayRecord)
    return (int(task["round"]), dict(arrays.to_torch_state_dict()),
            dict(json.loads(str(task["settings"]))))


@dataclass(frozen=True)
class FlowerUpdate:
    """A client's reply read back from Flower: what :class:`lpfl.trainer_api.TrainResult`
    asks for."""

    state: Mapping[str, torch.Tensor]
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)


def update_content(state: Mapping[str, torch.Tensor], num_examples: int,
                   metrics: Mapping[str, float]) -> RecordDict:
    if NUM_EXAMPLES in metrics:
        raise MessageError(f"a client metric may not be called {NUM_EXAMPLES!r}")
    return RecordDict({ARRAYS: ArrayRecord({k: v.detach().cpu() for k, v in state.items()}),
                       METRICS: MetricRecord({NUM_EXAMPLES: int(num_examples),
                                              **{k: float(v) for k, v in metrics.items()}})})


def read_update(content: RecordDict) -> FlowerUpdate:
    """The trained state, number of examples and metrics of an update message's content."""
    arrays = _record(content, ARRAYS, ArrayRecord)
    metrics = dict(_record(content, METRICS, MetricRecord))
    count = metrics.pop(NUM_EXAMPLES, None)
    if not isinstance(count, int):
        raise MessageError(f"the update has no integer {NUM_EXAMPLES!r}")
    return FlowerUpdate(dict(arrays.to_torch_state_dict()), count,
                        {k: float(v) for k, v in metrics.items()  # type: ignore[arg-type]
                         if isinstance(v, (int, float))})
