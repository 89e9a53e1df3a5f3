"""Evaluation off the critical path: rounds do not wait for it, and no evaluation is lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch

from lpfl.errors import ConfigError, LpflError
from lpfl.results import read_document
from lpfl.server.background_eval import SPOOL_NAME, BackgroundEvaluator, Evaluation
from lpfl.server.checkpoint import load_checkpoint, save_checkpoint
from lpfl.transport import EvaluationMode, ServerSettings, server_settings_from_dict
from tests import fake_federation as ff

IDS = ["c-1", "c-2"]
EVAL_SECONDS = 1.0


def slow_evaluation() -> Evaluation:
    """Built in the worker process: the fake evaluation, taking :data:`EVAL_SECONDS`."""

    def evaluate(round_number: int, state: Mapping[str, torch.Tensor]) -> dict[str, float]:
        time.sleep(EVAL_SECONDS)
        return ff.evaluate(round_number, state)

    return evaluate


def broken_evaluation() -> Evaluation:
    raise RuntimeError("no test split on this machine")


def run(folder: Path, background: BackgroundEvaluator | None, rounds: int = 3) -> ff.InProcessRun:
    async def scenario() -> ff.InProcessRun:
        return await ff.run_in_process(folder, IDS, rounds=rounds, clients_per_round=2,
                                       background=background, timeout=60.0)

    return asyncio.run(scenario())


def test_rounds_do_not_wait_and_every_evaluation_lands_in_its_record(tmp_path: Path) -> None:
    inline = run(tmp_path / "inline", None)
    folder = tmp_path / "background"
    done = run(folder, BackgroundEvaluator(slow_evaluation, folder))
    assert done.outcome.completed
    expected = [r.eval_metrics for r in inline.outcome.rounds]
    assert [r.eval_metrics for r in done.outcome.rounds] == expected
    for record in done.outcome.rounds:
        assert record.eval_seconds >= EVAL_SECONDS
        assert record.seconds < EVAL_SECONDS  # the round's own time, without its evaluation
    on_disk = read_document(folder / "results.json")["runs"][0]["records"]
    assert [r["eval_metrics"] for r in on_disk] == expected
    assert [r.eval_metrics for r in load_checkpoint(folder / "checkpoint.safetensors").rounds] \
        == expected
    assert list((folder / SPOOL_NAME).iterdir()) == []


def test_a_resumed_server_evaluates_what_a_crash_left_spooled(tmp_path: Path) -> None:
    """A checkpoint whose last round has no evaluation yet, its state spooled, and the spooled
    state of a round that was never recorded."""
    run(tmp_path, None, rounds=2)
    path = tmp_path / "checkpoint.safetensors"
    checkpoint = load_checkpoint(path)
    last = checkpoint.rounds[-1]
    crashed = [*checkpoint.rounds[:-1], type(last).from_dict({**last.to_dict(),
                                                              "eval_metrics": {}})]
    save_checkpoint(path, type(checkpoint)(checkpoint.round, checkpoint.global_state, crashed,
                                           checkpoint.rng_state))
    background = BackgroundEvaluator(slow_evaluation, tmp_path)
    background.spool_state(2, checkpoint.global_state)
    background.spool_state(3, checkpoint.global_state)

    async def resume() -> list[dict[str, float]]:
        server = ff.make_server(tmp_path, {"c-1": "t" * 32}, rounds=2, clients_per_round=2,
                                resume=True, background=background)
        outcome = await server.run()
        return [dict(r.eval_metrics) for r in outcome.rounds]

    assert asyncio.run(resume()) == [dict(r.eval_metrics) for r in checkpoint.rounds]
    assert background.spooled() == []


def test_a_worker_that_cannot_evaluate_ends_the_run_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(LpflError, match=r"background evaluation of round 1 failed.*no test split"):
        run(tmp_path, BackgroundEvaluator(broken_evaluation, tmp_path), rounds=2)


def test_background_evaluation_cannot_guard_accuracy() -> None:
    assert server_settings_from_dict({"evaluation": "background"}).evaluation is \
        EvaluationMode.BACKGROUND
    with pytest.raises(ConfigError, match="max-accuracy-drop"):
        server_settings_from_dict({"evaluation": "background",
                                   "round": {"max-accuracy-drop": 0.1}})
    assert ServerSettings().evaluation is EvaluationMode.INLINE
