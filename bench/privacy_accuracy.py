"""LP-FL accuracy under client-level differential privacy, at several ε, against no noise.

    python bench/privacy_accuracy.py --config bench/privacy_accuracy.toml --out DIR \
        [--epsilons 8,4,1] [--seeds 0,1] [--split validation|test]

The run file fixes the federation (many clients: client-level DP needs them), the clip norm
(``[server.round] clip = "absolute"``, ``clip-norm``) and δ (``[server.round.privacy] delta``).
For each target ε the noise multiplier is calibrated (:func:`noise_for`) so that the run's
schedule — ``federation.rounds`` rounds, each sampling ``federation.clients_per_round`` of
``data.num_clients`` clients — spends at most that ε, with the accountant the server uses
(:class:`lpfl.privacy.Accountant`); the reference run has the same clipping without noise (and
FedAvg's example weights: differential privacy averages with equal ones). Every run is appended
to ``DIR/results.json`` at once (a rerun skips finished ones); ``report.md`` and
``accuracy.png`` in ``DIR`` give accuracy against ε, the standard deviation of the noise on the
averaged update, the share of updates the clip bound cut, and what the same ε would cost a
federation of 1,000 clients sampled at the same rate.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from lpfl.benchmark import environment
from lpfl.config import RunConfig
from lpfl.errors import ConfigError, LpflError
from lpfl.privacy import Accountant, DpRound
from lpfl.protocol import ClipMode, RoundRules
from lpfl.results import ResultsFile
from lpfl.simulate import federated_data, run_method
from lpfl.transport import load_server_config

NO_NOISE = 0.0
"""The ``epsilon`` of the reference run (no noise: ε is infinite)."""
LARGE_FLEET = 1000


def spent(noise_multiplier: float, population: int, sampled: int, rounds: int,
          delta: float) -> float:
    """ε after ``rounds`` rounds that each sample ``sampled`` of ``population`` clients."""
    accountant = Accountant(delta, history=[DpRound(noise_multiplier, population, sampled)]
                            * rounds)
    return accountant.epsilon()


def noise_for(epsilon: float, population: int, sampled: int, rounds: int, delta: float,
              tolerance: float = 1e-2) -> float:
    """The smallest noise multiplier (within ``tolerance``, relative) whose schedule spends at
    most ``epsilon``; bisection, as ε falls when the noise grows."""
    if epsilon <= 0:
        raise ConfigError(f"epsilon={epsilon} must be > 0")
    low, high = 0.05, 1.0
    while spent(high, population, sampled, rounds, delta) > epsilon:
        low, high = high, high * 2
        if high > 1e4:
            raise ConfigError(f"no noise multiplier up to 1e4 reaches ε = {epsilon} over "
                              f"{rounds} rounds")
    while high - low > tolerance * high:
        middle = (low + high) / 2
        if spent(middle, population, sampled, rounds, delta) > epsilon:
            low = middle
        else:
            high = middle
    return high


def dp_rules(rules: RoundRules, noise_multiplier: float) -> RoundRules:
    """``rules`` with ``noise_multiplier`` (0: differential privacy off) and no ε budget (the
    noise is calibrated to the target ε already)."""
    privacy = dataclasses.replace(rules.privacy, noise_multiplier=noise_multiplier,
                                  epsilon_budget=0.0)
    return dataclasses.replace(rules, privacy=privacy)


def check_rules(config: RunConfig, rules: RoundRules) -> None:
    if rules.clip is not ClipMode.ABSOLUTE:
        raise ConfigError("differential privacy needs [server.round] clip = \"absolute\" with "
                          "clip-norm > 0 in the run file")
    if config.federation.clients_per_round > config.data.num_clients:
        raise ConfigError("federation.clients_per_round exceeds data.num_clients")


def clipped_share(run: Mapping[str, Any]) -> float:
    """The share of accepted updates whose change the clip bound cut, over the run's rounds."""
    accepted = sum(len(x.get("clients", [])) for x in run["rounds"])
    return sum(len(x.get("clipped", [])) for x in run["rounds"]) / max(accepted, 1)


def run_benchmark(config: RunConfig, rules: RoundRules, epsilons: Sequence[float],
                  seeds: Sequence[int], split: str, results: ResultsFile) -> None:
    fed, data_settings = config.federation, config.data
    delta = rules.privacy.delta
    for seed in seeds:
        for target in (NO_NOISE, *epsilons):
            if results.has(epsilon_target=target, seed=seed, split=split):
                continue
            noise = (0.0 if target == NO_NOISE else
                     noise_for(target, data_settings.num_clients, fed.clients_per_round,
                               fed.rounds, delta))
            run_rules = dp_rules(rules, noise)
            data = federated_data(config, seed)
            if split == "validation":
                data = dataclasses.replace(data, test=data.validation)
            torch.set_num_threads(config.run.threads)
            run = run_method(config, config.run.methods[0], seed, data, rules=run_rules)
            epsilon = (spent(noise, data_settings.num_clients, fed.clients_per_round,
                             fed.rounds, delta) if noise else math.inf)
            run.update(epsilon_target=target, noise_multiplier=noise, delta=delta,
                       epsilon_spent=epsilon if math.isfinite(epsilon) else None,
                       split=split, clip_norm=rules.clip_norm,
                       clipped_share=clipped_share(run))
            results.add(run)


def mean_std(values: Sequence[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {std:.3f}"


def report(runs: Sequence[Mapping[str, Any]], config: RunConfig, delta: float,
           measured_on: Mapping[str, Any]) -> str:
    """Markdown: per target ε, the noise, its size on the averaged update, accuracy."""
    fed = config.federation
    population, sampled = config.data.num_clients, fed.clients_per_round
    rate = sampled / population
    large = max(2, round(LARGE_FLEET * rate))
    targets = sorted({float(r["epsilon_target"]) for r in runs}, key=lambda e: (e != 0, -e))
    machine = ", ".join(f"{k} {v}" for k, v in measured_on.items())
    lines = ["# LP-FL under client-level differential privacy", "",
             f"{population} clients, {sampled} sampled per round, {fed.rounds} rounds, "
             f"δ = {delta:g}, clip norm {runs[0]['clip_norm']:g}; {runs[0]['split']} accuracy, "
             f"mean ± std over seeds. Measured with: {machine}.", "",
             "| ε target | noise multiplier | noise std on the mean update | updates clipped | "
             f"seeds | accuracy | noise multiplier at {LARGE_FLEET} clients "
             f"({large} sampled) | noise std on the mean there |",
             "|---|---|---|---|---|---|---|---|"]
    for target in targets:
        group = [r for r in runs if float(r["epsilon_target"]) == target]
        clip = float(group[0]["clip_norm"])
        noise = float(group[0]["noise_multiplier"])
        seeds = ",".join(str(r["seed"]) for r in group)
        accuracy = mean_std([float(r["final_accuracy"]) for r in group])
        clipped = statistics.fmean(float(r["clipped_share"]) for r in group)
        if target == NO_NOISE:
            lines.append(f"| none | 0 | 0 | {clipped:.0%} | {seeds} | {accuracy} | – | – |")
            continue
        at_scale = noise_for(target, LARGE_FLEET, large, fed.rounds, delta)
        lines.append(
            f"| {target:g} | {noise:.3f} | {2 * noise * clip / sampled:.4f} | {clipped:.0%} | "
            f"{seeds} | {accuracy} | {at_scale:.3f} | {2 * at_scale * clip / large:.4f} |")
    lines += ["", "The noise on the mean update is 2 × noise multiplier × clip norm / sampled "
              "clients (the standard deviation of every coordinate). At the same sampling rate "
              f"a fleet of {LARGE_FLEET} clients needs about the same noise multiplier for the "
              "same ε, and averages over more clients, so the noise on its mean update is "
              f"{large / sampled:.0f}× smaller; its accuracy was not measured here."]
    return "\n".join(lines) + "\n"


def plot(runs: Sequence[Mapping[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    noisy = sorted({float(r["epsilon_target"]) for r in runs} - {NO_NOISE})
    fig, ax = plt.subplots(figsize=(5, 3.2))
    means = [statistics.fmean(float(r["final_accuracy"]) for r in runs
                              if float(r["epsilon_target"]) == e) for e in noisy]
    ax.plot(noisy, means, marker="o", label="LP-FL with DP")
    reference = [float(r["final_accuracy"]) for r in runs if r["epsilon_target"] == NO_NOISE]
    if reference:
        ax.axhline(statistics.fmean(reference), linestyle="--", color="grey", label="no noise")
    ax.set_xscale("log")
    ax.set_xlabel("ε (δ fixed)")
    ax.set_ylabel("accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True, help="run file")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--epsilons", default="8,4,1", help="comma-separated target ε")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    parser.add_argument("--split", choices=("validation", "test"), default="validation")
    args = parser.parse_args(argv)
    try:
        config, server = load_server_config(args.config)
        rules = server.round
        check_rules(config, rules)
        epsilons = [float(e) for e in args.epsilons.split(",") if e]
        seeds = [int(s) for s in args.seeds.split(",") if s]
        measured_on = environment(config.model)
        results = ResultsFile(args.out / "results.json",
                              {"config": config.to_dict(), "environment": measured_on,
                               "rules": dataclasses.asdict(dp_rules(rules, 0.0),
                                                           dict_factory=_plain)})
        results.require_same_config()
        run_benchmark(config, rules, epsilons, seeds, args.split, results)
    except (ConfigError, LpflError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    runs = [r for r in results.reload() if r["split"] == args.split]
    (args.out / "report.md").write_text(report(runs, config, rules.privacy.delta, measured_on),
                                        encoding="utf-8")
    plot(runs, args.out / "accuracy.png")
    print(f"wrote {args.out / 'results.json'}, report.md and accuracy.png")
    return 0


def _plain(items: list[tuple[str, Any]]) -> dict[str, Any]:
    return {k: v.value if hasattr(v, "value") else v for k, v in items}


if __name__ == "__main__":
    sys.exit(main())
