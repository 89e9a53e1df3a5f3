"""What an update must be before it is aggregated: one check, made in one place.

The round machine (:meth:`lpfl.protocol.RoundMachine.handle`) decodes every update it receives
and calls :func:`check_update` before clipping and folding it in, for the websocket server and
the in-process simulation alike. A refused update becomes that client's ``rejected`` outcome with
the code :data:`lpfl.wire.E_INVALID_UPDATE` and the error's message as its reason; the round goes
on without it. The wire (:mod:`lpfl.wire`) only checks that a message is well-formed JSON of the
right types, and the aggregation rules (:mod:`lpfl.aggregation`) trust what passed this check.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from lpfl.errors import LpflError
from lpfl.wire import MAX_EXAMPLES


class InvalidUpdate(LpflError):
    """An update that must not be aggregated; the message says what is wrong with it."""


def check_update(state: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor],
                 num_examples: object, metrics: Mapping[str, object]) -> None:
    """Raise :class:`InvalidUpdate` unless the update is fit to aggregate against ``reference``
    (the global state it was trained from): ``num_examples`` (its weight) an integer in
    ``[1, MAX_EXAMPLES]``, every metric a finite number, exactly ``reference``'s tensor names,
    and each tensor of the reference's dtype and shape with finite values only."""
    if (not isinstance(num_examples, int) or isinstance(num_examples, bool)
            or not 1 <= num_examples <= MAX_EXAMPLES):
        raise InvalidUpdate(f"num_examples {num_examples!r} must be an integer in "
                            f"[1, {MAX_EXAMPLES}]: it is the update's weight")
    for name, value in metrics.items():
        if not (isinstance(value, int | float) and not isinstance(value, bool)
                and math.isfinite(value)):
            raise InvalidUpdate(f"metric {name!r} is {value!r}, not a finite number")
    missing = sorted(set(reference) - set(state))
    extra = sorted(set(state) - set(reference))
    if missing or extra:
        raise InvalidUpdate(f"tensor names differ from the global state: missing {missing[:3]}, "
                            f"unexpected {extra[:3]}")
    for name, expected in reference.items():
        tensor = state[name]
        if tensor.dtype != expected.dtype:
            raise InvalidUpdate(f"tensor {name!r} is {tensor.dtype}, expected {expected.dtype}")
        if tensor.shape != expected.shape:
            raise InvalidUpdate(f"tensor {name!r} has shape {tuple(tensor.shape)}, expected "
                                f"{tuple(expected.shape)}")
        if not bool(torch.isfinite(tensor).all()):
            raise InvalidUpdate(f"tensor {name!r} is not finite")
