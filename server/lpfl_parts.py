"""The real LP-FL pieces of an aggregator run, built from a run config.

The server runs one federated method (the first of ``run.methods``: ``lp-fl``, ``lp-fl-no-soft``,
``fp-fl`` or ``fp-fl-no-soft``) with the first seed. It uses exactly the strategy, initial adapter
and test evaluation of ``lpfl simulate``, so a websocket run and a simulation of the same config
end with the same global state. A finished LoRA run keeps its final adapter as a PEFT folder in
``run-dir/adapter`` (:mod:`lpfl.adapter_folder`); an FP-FL run's final weights stay in
``checkpoint.safetensors``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path

import torch

from lpfl.adapter_folder import save_final_state
from lpfl.config import RunConfig
from lpfl.errors import ConfigError
from lpfl.methods import Trains, lookup
from lpfl.model.adapters import load_trainable_state, trainable_state
from lpfl.model.prompt import PromptModel
from lpfl.server.app import Evaluate
from lpfl.server.cli import ServerParts
from lpfl.simulate import (
    Evaluator,
    federated_data,
    fresh_prompt_model,
    method_mode,
    method_strategy,
)

SERVABLE = ("lp-fl", "lp-fl-no-soft", "fp-fl", "fp-fl-no-soft")


def served_method(config: RunConfig) -> str:
    """The method a server runs: the first of ``run.methods``, which must be federated."""
    method = config.run.methods[0]
    if method not in SERVABLE:
        raise ConfigError(f"run.methods starts with {method!r}, which a server cannot run; "
                          f"put one of {', '.join(SERVABLE)} first")
    return method


def accuracy_evaluation(config: RunConfig, pm: PromptModel | None = None) -> Evaluate:
    """The accuracy of a global state on the run's test split, with ``pm`` (a fresh prompt
    model of the served method when not given: what a background evaluation worker builds)."""
    method = served_method(config)
    seed = config.run.seeds[0]
    model = pm if pm is not None else fresh_prompt_model(config, method_mode(method), seed)
    evaluator = Evaluator(federated_data(config, seed), config.run.eval_batch_size)

    def evaluate(round_number: int, state: Mapping[str, torch.Tensor]) -> dict[str, float]:
        load_trainable_state(model, state)
        return {"accuracy": evaluator(model)}

    return evaluate


def lpfl_server_parts(config: RunConfig) -> ServerParts:
    """Strategy, initial global state and test evaluation for the configured method."""
    method = served_method(config)
    seed = config.run.seeds[0]
    pm = fresh_prompt_model(config, method_mode(method), seed)

    def finish(state: Mapping[str, torch.Tensor], run_dir: Path) -> str:
        line = save_final_state(run_dir / "adapter", config, method, seed, state)
        if lookup(method).trains is not Trains.LORA:
            line += f"; its final weights are in {run_dir / 'checkpoint.safetensors'}"
        return line

    return ServerParts(strategy=method_strategy(config, method, seed),
                       initial_state=trainable_state(pm),
                       evaluate=accuracy_evaluation(config, pm), finish=finish,
                       evaluation_factory=functools.partial(accuracy_evaluation, config))
