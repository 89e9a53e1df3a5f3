"""lpfl's hello, task and update as Flower message contents.

Tensors travel as lpfl's own payloads (:func:`lpfl.tensors.encode_tensors` bytes, one
``uint8`` array named ``payload`` in an ``ArrayRecord``), so a Flower run honours the run file's
task and update encodings (fp32, fp16, int8) and carries exactly the bytes a websocket run does,
plus Flower's framing. A task holds the global state (``arrays``) and, in a ``ConfigRecord``
(``task``), the round number, the :class:`~lpfl.task.TaskSettings` wire form as JSON and the
update encoding; an update holds the trained state (``arrays``) with the number of training
examples and the client's metrics in a ``MetricRecord`` (``metrics``). A hello (a Flower *query*
message) asks a node for its lpfl client id and capabilities.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from lpfl.errors import LpflError
from lpfl.tensors import decode_tensors, encode_tensors

ARRAYS = "arrays"
TASK = "task"
METRICS = "metrics"
HELLO = "hello"
PAYLOAD = "payload"
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


def _payload_record(payload: bytes) -> ArrayRecord:
    return ArrayRecord({PAYLOAD: Array(np.frombuffer(payload, dtype=np.uint8))})


def _payload(content: RecordDict) -> bytes:
    arrays = _record(content, ARRAYS, ArrayRecord)
    if PAYLOAD not in arrays:
        raise MessageError(f"the Flower message's arrays hold no {PAYLOAD!r}: it was not sent "
                           "by lpfl's Flower app")
    return bytes(arrays[PAYLOAD].numpy().tobytes())


@dataclass(frozen=True)
class FlowerTask:
    """A task read back from Flower."""

    round: int
    state: dict[str, torch.Tensor]
    settings: dict[str, Any]
    update_encoding: str


def task_content(round_number: int, payload: bytes, settings: Mapping[str, Any],
                 update_encoding: str) -> RecordDict:
    """A task: the global state as an encoded payload, the settings and the reply's encoding."""
    return RecordDict({ARRAYS: _payload_record(payload),
                       TASK: ConfigRecord({"round": round_number,
                                           "settings": json.dumps(dict(settings)),
                                           "update_encoding": update_encoding})})


def read_task(content: RecordDict) -> FlowerTask:
    """The round, global state, settings (wire form) and update encoding of a task."""
    task = _record(content, TASK, ConfigRecord)
    return FlowerTask(int(task["round"]), decode_tensors(_payload(content)),
                      dict(json.loads(str(task["settings"]))), str(task["update_encoding"]))


@dataclass(frozen=True)
class FlowerUpdate:
    """A client's reply read back from Flower: what :class:`lpfl.trainer_api.TrainResult`
    asks for."""

    state: Mapping[str, torch.Tensor]
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)


def update_content(state: Mapping[str, torch.Tensor], encoding: str, num_examples: int,
                   metrics: Mapping[str, float]) -> RecordDict:
    """An update: the trained state encoded in ``encoding``, its example count and metrics."""
    if NUM_EXAMPLES in metrics:
        raise MessageError(f"a client metric may not be called {NUM_EXAMPLES!r}")
    return RecordDict({ARRAYS: _payload_record(encode_tensors(state, encoding)),
                       METRICS: MetricRecord({NUM_EXAMPLES: int(num_examples),
                                              **{k: float(v) for k, v in metrics.items()}})})


def read_update(content: RecordDict) -> FlowerUpdate:
    """The trained state (decoded), number of examples and metrics of an update."""
    state = decode_tensors(_payload(content))
    metrics = dict(_record(content, METRICS, MetricRecord))
    count = metrics.pop(NUM_EXAMPLES, None)
    if not isinstance(count, int):
        raise MessageError(f"the update has no integer {NUM_EXAMPLES!r}")
    return FlowerUpdate(state, count,
                        {k: float(v) for k, v in metrics.items()  # type: ignore[arg-type]
                         if isinstance(v, (int, float))})
