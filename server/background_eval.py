"""Evaluation off the critical path: global states evaluated in another process while rounds go on.

With ``server.evaluation = "background"`` the aggregator commits a round without waiting for its
evaluation: the round's global state is written to ``RUN_DIR/pending-eval/round-N.safetensors``
(before the round's checkpoint, so a crash cannot lose it) and evaluated by one worker process,
in round order, while the next rounds train. When an evaluation comes back, the round's record
gets its metrics and ``eval_seconds`` and its file is removed. The run ends only after every
evaluation is back; a resumed run evaluates the files a crash left behind.

The worker builds its evaluation once with a picklable :data:`EvaluationFactory` (for LP-FL:
the run's test split and a prompt model of its own), so its memory and CPU are its own and the
server's event loop never waits for it.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import re
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lpfl.errors import LpflError

logger = logging.getLogger(__name__)

Evaluation = Callable[[int, Mapping[str, torch.Tensor]], Mapping[str, float]]
EvaluationFactory = Callable[[], Evaluation]
"""Builds the evaluation in the worker process; must be picklable (a module-level function or
a ``functools.partial`` of one)."""

SPOOL_NAME = "pending-eval"
_SPOOLED = re.compile(r"round-(\d+)\.safetensors")

_worker_evaluation: Evaluation | None = None
_worker_failure = "the worker was not started"


def _start_worker(factory: EvaluationFactory) -> None:
    """Build the worker's evaluation; a failure is kept and raised by every evaluation (an
    exception here would only break the pool, without its reason)."""
    global _worker_evaluation, _worker_failure
    torch.set_num_threads(1)
    try:
        _worker_evaluation = factory()
    except Exception as exc:
        _worker_failure = f"the evaluation could not be built: {type(exc).__name__}: {exc}"


def _evaluate_file(round_number: int, path: str) -> tuple[dict[str, float], float]:
    if _worker_evaluation is None:
        raise RuntimeError(_worker_failure)
    state = load_file(path)
    started = time.perf_counter()
    metrics = _worker_evaluation(round_number, state)
    return {str(k): float(v) for k, v in metrics.items()}, time.perf_counter() - started


class BackgroundEvaluator:
    """One worker process evaluating spooled global states in the order they are submitted."""

    def __init__(self, factory: EvaluationFactory, run_dir: Path) -> None:
        self.spool = Path(run_dir) / SPOOL_NAME
        self.spool.mkdir(parents=True, exist_ok=True)
        self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_start_worker, initargs=(factory,))

    def path(self, round_number: int) -> Path:
        return self.spool / f"round-{round_number}.safetensors"

    def spool_state(self, round_number: int, state: Mapping[str, torch.Tensor]) -> None:
        """Write a round's state where the worker reads it (atomically: temporary, rename)."""
        temporary = self.spool / f".round-{round_number}.tmp"
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(temporary))
        temporary.replace(self.path(round_number))

    def spooled(self) -> list[int]:
        """The rounds whose states wait for an evaluation, in order."""
        found = (_SPOOLED.fullmatch(p.name) for p in self.spool.iterdir())
        return sorted(int(m.group(1)) for m in found if m is not None)

    def discard(self, round_number: int) -> None:
        self.path(round_number).unlink(missing_ok=True)

    async def evaluate(self, round_number: int) -> tuple[dict[str, float], float]:
        """The metrics of a spooled round and the seconds the worker spent on them; the file
        is removed once they are back. A worker that cannot start or crashes is an LpflError."""
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self._pool, _evaluate_file, round_number,
                                                str(self.path(round_number)))
        except Exception as exc:
            raise LpflError(f"the background evaluation of round {round_number} failed: "
                            f"{type(exc).__name__}: {exc}") from exc
        self.discard(round_number)
        return result

    def close(self) -> None:
        """Stop the worker (after the evaluation in progress, if any)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
