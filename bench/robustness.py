"""Robustness benchmark: how much accuracy do hostile clients cost each aggregation defence?

Usage::

    nice -n 19 python bench/robustness.py --out bench/results/robustness
    nice -n 19 python bench/robustness.py --out /tmp/r --rounds 2 --clients 4 --attackers 1 \
        --attacks scaled --defences fedavg-defaults
    nice -n 19 python bench/robustness.py --config configs/smoke.toml --out /tmp/smollm2 \
        --set data.shots_per_class=20 --attacks sign-flip --attackers 1

Ten LP-FL clients (by default a tiny Llama from config, LoRA adapters, the separable toy task of
:mod:`lpfl.data.toy`; with ``--config``, that run file's model, data and settings) train every
round through the server's own round state machine (:class:`lpfl.protocol.RoundMachine`, in
process, no sockets, driven by :func:`lpfl.rounds.drive` as in ``lpfl simulate``), so norm
clipping, the guards and the aggregation rule are exactly the server's. 1 or 3 of them are
attackers that, every round, send one of:

- ``scaled``: their honestly trained change from the global state, times :data:`BOOST`;
- ``sign-flip``: that change times ``-BOOST``;
- ``random``: Gaussian noise with :data:`BOOST` times the norm of their honest change.

Each attack runs against each defence (:data:`DEFENCES`): FedAvg without clipping (the old
default), FedAvg with the default settings (adaptive clipping and the guard), coordinate-wise
median, trimmed mean (``trim-fraction`` 0.3, at least the largest hostile share) and the norm
filter; each defence also runs without attackers. ``results.json`` holds every run's accuracy per
round and what the server did to the attackers' updates; ``report.md`` has the final accuracies
and their change against the same defence without attackers.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lpfl.client_round import LocalClient
from lpfl.config import RunConfig, config_from_dict, load_config
from lpfl.data import FederatedData
from lpfl.data.toy import write_toy_csv
from lpfl.model.adapters import load_trainable_state, trainable_state
from lpfl.protocol import ClipMode, RoundRules
from lpfl.records import ClientStatus
from lpfl.rounds import DrivenRound, drive
from lpfl.simulate import Evaluator, federated_data, fresh_prompt_model, method_strategy
from lpfl.strategy import Aggregation, ClientUpdate
from lpfl.trainer_api import Trainer

METHOD = "lp-fl"
BOOST = 10.0
"""How far attackers push: their change is this many times an honest one."""


class Attack(enum.Enum):
    NONE = "none"
    SCALED = "scaled"
    SIGN_FLIP = "sign-flip"
    RANDOM = "random"


DEFENCES: dict[str, RoundRules] = {
    "fedavg-no-clip": RoundRules(clip=ClipMode.OFF),
    "fedavg-defaults": RoundRules(),
    "median": RoundRules(aggregation=Aggregation.MEDIAN),
    "trimmed-mean": RoundRules(aggregation=Aggregation.TRIMMED_MEAN, trim_fraction=0.3),
    "norm-filter": RoundRules(aggregation=Aggregation.NORM_FILTER),
}


def sized(clients: int, rounds: int) -> list[str]:
    """Overrides that make every one of ``clients`` clients train in each of ``rounds`` rounds."""
    return [f"data.num_clients={clients}", f"federation.clients_per_round={clients}",
            f"federation.rounds={rounds}"]


def bench_config(data_file: Path, clients: int, rounds: int) -> RunConfig:
    """The tiny LP-FL run every scenario shares: every client trains every round."""
    return config_from_dict({
        "model": {"source": "tiny-llama", "max_length": 48},
        "data": {"dataset": str(data_file), "test_size": 200, "validation_size": 0,
                 "shots_per_class": 4 * clients, "unlabeled_per_client": 16,
                 "num_clients": clients},
        "federation": {"rounds": rounds, "clients_per_round": clients, "local_steps": 6,
                       "batch_size": 8, "lr": 5e-3},
        "lora": {"r": 4, "target_modules": ["q_proj", "v_proj", "o_proj"]},
        "soft_labels": {"threshold": 0.6, "growth": 8, "start_round": 2},
        "run": {"methods": [METHOD], "eval_batch_size": 64, "threads": 1},
    })


def attacked(update: ClientUpdate, global_state: Mapping[str, torch.Tensor], attack: Attack,
             generator: torch.Generator) -> ClientUpdate:
    """What an attacker sends instead of its honest ``update``."""
    delta = {n: update.state[n] - g for n, g in global_state.items()}
    if attack is Attack.RANDOM:
        honest = torch.sqrt(sum((d.double().square().sum() for d in delta.values()),
                                torch.tensor(0.0, dtype=torch.float64)))
        noise = {n: torch.randn(d.shape, generator=generator) for n, d in delta.items()}
        size = torch.sqrt(sum((z.double().square().sum() for z in noise.values()),
                              torch.tensor(0.0, dtype=torch.float64)))
        factor = float(BOOST * honest / size)
        state = {n: global_state[n] + z * factor for n, z in noise.items()}
    else:
        sign = -1.0 if attack is Attack.SIGN_FLIP else 1.0
        state = {n: global_state[n] + sign * BOOST * d for n, d in delta.items()}
    return dataclasses.replace(update, state=state)


@dataclass
class Attacker:
    """A client that trains honestly, then sends :func:`attacked` instead of its update."""

    honest: LocalClient
    attack: Attack
    generator: torch.Generator

    def capabilities(self) -> dict[str, Any]:
        return self.honest.capabilities()

    def train_round(self, round_number: int, global_state: dict[str, torch.Tensor],
                    settings: dict[str, Any]) -> ClientUpdate:
        update = self.honest.train_round(round_number, global_state, settings)
        return attacked(update, global_state, self.attack, self.generator)


@dataclass(frozen=True)
class Scenario:
    defence: str
    attack: Attack
    attackers: int

    @property
    def name(self) -> str:
        if self.attack is Attack.NONE:
            return f"{self.defence}/no-attack"
        return f"{self.defence}/{self.attackers}x{self.attack.value}"


def run_scenario(config: RunConfig, data: FederatedData, scenario: Scenario,
                 seed: int = 0) -> dict[str, Any]:
    """One federation under ``scenario``, driven through the server's round state machine."""
    started = time.perf_counter()
    pm = fresh_prompt_model(config, "lora", seed)
    batch = config.run.eval_batch_size
    honest = {f"client-{i}": LocalClient(f"client-{i}", i, pm, labeled, unlabeled, batch)
              for i, (labeled, unlabeled) in enumerate(zip(data.labeled, data.unlabeled,
                                                           strict=True))}
    hostile = set(sorted(honest)[: scenario.attackers if scenario.attack is not Attack.NONE
                                 else 0])
    generator = torch.Generator().manual_seed(seed)
    clients: dict[str, Trainer] = {
        cid: Attacker(client, scenario.attack, generator) if cid in hostile else client
        for cid, client in honest.items()}
    evaluate = Evaluator(data, batch)

    def evaluation(round_number: int, state: Mapping[str, torch.Tensor]) -> dict[str, float]:
        load_trainable_state(pm, state)
        return {"accuracy": evaluate(pm)}

    rounds: list[dict[str, Any]] = []

    def record(driven: DrivenRound) -> None:
        committed = driven.committed
        rows = committed.outcomes
        rounds.append({
            "round": committed.round, "accuracy": committed.eval_metrics["accuracy"],
            "refused": committed.refused,
            "attackers": {cid: {"status": str(rows[cid].status), "clipped": rows[cid].clipped}
                          for cid in sorted(hostile)},
            "honest_clipped": sum(rows[c].clipped for c in rows if c not in hostile),
            "honest_discarded": sum(rows[c].status is ClientStatus.DISCARDED
                                    for c in rows if c not in hostile),
        })

    drive(method_strategy(config, METHOD, seed), trainable_state(pm), DEFENCES[scenario.defence],
          config.federation.rounds, clients, evaluation, record)
    return {"scenario": scenario.name, "defence": scenario.defence,
            "attack": scenario.attack.value, "attackers": len(hostile), "seed": seed,
            "final_accuracy": rounds[-1]["accuracy"], "rounds": rounds,
            "seconds": time.perf_counter() - started}


def scenarios(defences: Sequence[str], attacks: Sequence[Attack],
              attacker_counts: Sequence[int]) -> list[Scenario]:
    """Every defence without attackers, then every (attackers, attack, defence) combination."""
    plain = [Scenario(d, Attack.NONE, 0) for d in defences]
    return plain + [Scenario(d, a, k) for k in attacker_counts for a in attacks
                    if a is not Attack.NONE for d in defences]


def environment() -> dict[str, Any]:
    return {"python": platform.python_version(), "torch": torch.__version__,
            "lpfl": importlib.metadata.version("lpfl"), "machine": platform.machine(),
            "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(), "command": " ".join(sys.argv)}


def report(runs: Sequence[Mapping[str, Any]], clients: int) -> str:
    """``report.md``: final accuracy per defence (rows) and scenario (columns), with the change
    in points against the same defence without attackers."""
    defences = list(dict.fromkeys(r["defence"] for r in runs))
    columns = list(dict.fromkeys(r["scenario"].split("/", 1)[1] for r in runs))
    final = {r["scenario"]: r["final_accuracy"] for r in runs}
    lines = ["# Robustness benchmark", "",
             f"Final test accuracy (%) of {clients} LP-FL clients; `k×attack`: k attackers every "
             f"round, boost {BOOST:g}. In brackets: the change in points against the same defence "
             "with no attacker.", "",
             "| defence | " + " | ".join(columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for defence in defences:
        base = final.get(f"{defence}/no-attack")
        cells = []
        for column in columns:
            value = final.get(f"{defence}/{column}")
            if value is None:
                cells.append("")
            elif base is None or column == "no-attack":
                cells.append(f"{100 * value:.1f}")
            else:
                cells.append(f"{100 * value:.1f} ({100 * (value - base):+.1f})")
        lines.append(f"| {defence} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, runs: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    document = {"meta": dict(meta), "runs": list(runs)}
    (out / "results.json").write_text(json.dumps(document, indent=1))
    (out / "report.md").write_text(report(runs, int(meta["clients"])))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--config", type=Path,
                        help="run file to use instead of the tiny model on the toy task")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE", help="override a --config value")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--attackers", default="1,3", help="attacker counts, comma-separated")
    parser.add_argument("--attacks", default="scaled,sign-flip,random")
    parser.add_argument("--defences", default=",".join(DEFENCES))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    defences = args.defences.split(",")
    unknown = set(defences) - set(DEFENCES)
    if unknown:
        parser.error(f"--defences {sorted(unknown)}: use {', '.join(DEFENCES)}")
    attacks = [Attack(a) for a in args.attacks.split(",")]
    counts = [int(k) for k in args.attackers.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        if args.config is None:
            config = bench_config(write_toy_csv(Path(folder) / "toy.csv", n=1000),
                                  args.clients, args.rounds)
        else:
            config = load_config(args.config, [*args.overrides,
                                               *sized(args.clients, args.rounds)])
            torch.set_num_threads(config.run.threads)
        data = federated_data(config, seed=0)
        meta = {"clients": args.clients, "rounds": args.rounds, "boost": BOOST,
                "config": config.to_dict(), "environment": environment()}
        runs = []
        for scenario in scenarios(defences, attacks, counts):
            runs.append(run_scenario(config, data, scenario))
            print(f"{scenario.name}: accuracy {runs[-1]['final_accuracy']:.3f} "
                  f"({runs[-1]['seconds']:.0f} s)", file=sys.stderr, flush=True)
            write_outputs(args.out, runs, meta)
    print(f"wrote {args.out / 'results.json'} and {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
