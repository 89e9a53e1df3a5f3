"""The real LP-FL pieces of an aggregator run, built from a run config.

The server runs one federated method (the first of ``run.methods``: ``lp-fl``, ``lp-fl-no-soft``,
``fp-fl`` or ``fp-fl-no-soft``) with the first seed. It uses exactly the strategy, initial adapter
and test evaluation of ``lpfl simulate``, so a websocket run and a simulation of the same config
end with the same global state. A finished LoRA run keeps its final adapter as a PEFT folder in
``run-dir/adapter`` (:mod:`lpfl.adapter_folder`); an FP-FL run's final weights stay in
``checkpoint.safetensors``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from lpfl.adapter_folder import save_final_state
from lpfl.config import RunConfig
from lpfl.errors import ConfigError
from lpfl.methods import Trains, lookup
from lpfl.model.adapters import load_trainable_state, trainable_state
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


def lpfl_server_parts(config: RunConfig) -> ServerParts:
    """Strategy, initial global state and test evaluation for the configured method."""
    method = served_method(config)
    seed = config.run.seeds[0]
    data = federated_data(config, seed)
    pm = fresh_prompt_model(config, method_mode(method), seed)
    evaluator = Evaluator(data, config.run.eval_batch_size)

    def evaluate(round_number: int, state: Mapping[str, torch.Tensor]) -> dict[str, float]:
        load_trainable_state(pm, state)
        return {"accuracy": evaluator(pm)}

    def finish(state: Mapping[str, torch.Tensor], run_dir: Path) -> str:
        line = save_final_state(run_dir / "adapter", config, method, seed, state)
        if lookup(method).trains is not Trains.LORA:
            line += f"; its final weights are in {run_dir / 'checkpoint.safetensors'}"
        return line

    return ServerParts(strategy=method_strategy(config, method, seed),
                       initial_state=trainable_state(pm), evaluate=evaluate, finish=finish)
