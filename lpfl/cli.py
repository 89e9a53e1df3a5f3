"""The ``lpfl`` command. Each subcommand parses arguments and calls one library function.

Every subcommand takes ``-q`` (warnings only) and ``-v`` (debug, and third-party start-up
messages); ``--help`` shows each option's default. An :class:`~lpfl.errors.LpflError` ends the
command with its message and exit code 2, Ctrl-C with exit code 130 and whatever the command
had written so far; neither prints a traceback.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lpfl import logs
from lpfl.errors import LpflError

log = logging.getLogger("lpfl")

INTERRUPTED = 130
"""The exit code after Ctrl-C (128 + SIGINT), as shells report it."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, unless it has none worth showing (None, off, empty) or its
    help already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if ("default" in text.lower() or default is None or default is False
                or default == "" or default == []):
            return text
        return super()._get_help_string(action)


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML run file (the defaults if omitted)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE", help="override one config value (repeatable)")


def cmd_simulate(args: argparse.Namespace) -> int:
    import torch

    from lpfl.adapter_folder import save_final_state
    from lpfl.config import load_config
    from lpfl.methods import Trains, lookup
    from lpfl.report import write_report
    from lpfl.results import ResultsFile
    from lpfl.simulate import FP32_RULES, federate, federated_data, run_method
    from lpfl.transport import load_server_config

    # The run file's [server.round] rules (encodings, clipping, aggregation, guards) apply to the
    # simulation as to a server run of it (lpfl.simulate.federate); without a file, the defaults.
    rules = FP32_RULES
    if args.config:
        config, server = load_server_config(args.config, args.overrides)
        rules = server.round
    else:
        config = load_config(None, args.overrides)
    torch.set_num_threads(config.run.threads)
    out = Path(args.out)
    results_path = out / "results.json"
    if args.fresh:
        results_path.unlink(missing_ok=True)
    results = ResultsFile(results_path, config.to_dict())
    results.require_same_config()
    kept: list[str] = []
    try:
        for seed in config.run.seeds:
            data = None
            for method in config.run.methods:
                if results.has(method=method, seed=seed):
                    log.info("skipping %s seed %d: already in %s", method, seed, results_path)
                    continue
                data = data or federated_data(config, seed)
                state: dict[str, torch.Tensor] = {}
                if lookup(method).trains is Trains.NOTHING:
                    results.add(run_method(config, method, seed, data, rules=rules))
                else:
                    run, state = federate(config, method, seed, data, rules=rules)
                    results.add(run)
                kept.append(save_final_state(out / "adapters" / f"{method}-seed{seed}", config,
                                             method, seed, state))
    except KeyboardInterrupt:
        if results.runs:
            write_report(out)
        print(f"interrupted: the finished runs are in {results_path}; the same command "
              "continues with the rest", file=sys.stderr)
        raise
    report = write_report(out)
    print("\n".join([*kept, f"wrote {results_path} and {report}"]))
    return 0


def cmd_bench_accuracy(args: argparse.Namespace) -> int:
    import torch

    from lpfl.benchmark import AccuracyBenchmark, load_bench, update_readme, write_bench_report
    from lpfl.results import ResultsFile

    out = Path(args.out)
    if not args.report_only:
        if not args.config:
            raise LpflError("lpfl bench accuracy needs --config BENCH.toml (or --report-only)")
        config, bench = load_bench(Path(args.config), args.overrides)
        torch.set_num_threads(config.run.threads)
        benchmark = AccuracyBenchmark(config, bench, out)
        only = args.only.split(",") if args.only else list(bench.methods)
        unknown = set(only) - set(bench.methods)
        if unknown:
            raise LpflError(f"--only {sorted(unknown)}: not among bench.methods {bench.methods}")
        benchmark.run(only)
    path = out / "results.json"
    if not path.is_file():
        raise LpflError(f"{path} does not exist: run the benchmark into --out first")
    stored = ResultsFile.load_config(path)
    runs = ResultsFile(path, stored).runs
    report = write_bench_report(out, runs, stored)
    if args.readme:
        update_readme(Path(args.readme), out, runs, stored)
    print(f"wrote {path} and {report}")
    return 0


def cmd_launch(args: argparse.Namespace) -> int:
    from lpfl.harness.launch import launch

    report = launch(args.config, args.clients, args.out)
    adapter = args.out / "adapter"
    kept = (f"final adapter in {adapter}" if adapter.is_dir()
            else f"no adapter folder (the method trains no adapter; see {args.out / 'server.log'})")
    print(f"wrote {args.out / 'results.json'} and {report}; {kept}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from lpfl.predict import predict_file

    predictions = predict_file(args.adapter, args.input, args.output, args.backend,
                               args.artefact, args.model, args.batch_size)
    if args.output is not None:
        print(f"wrote {len(predictions)} predictions to {args.output}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from lpfl.predict import evaluate_file

    evaluation = evaluate_file(args.adapter, args.input, args.backend, args.artefact, args.model,
                               args.batch_size)
    print(evaluation.summary(args.input))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from lpfl.compare import load_results, render_comparison

    print(render_comparison(load_results(args.run_a), load_results(args.run_b)), end="")
    return 0


def _add_adapter_commands(sub: Any) -> None:
    """``lpfl predict`` and ``lpfl eval``: use the adapter folder a run wrote."""
    predict = sub.add_parser(
        "predict", help="predict a class for each text of a file with a kept adapter",
        description="Score every row of a .csv/.jsonl file (a 'text' column; labels are not "
        "needed) with an adapter folder a run wrote; write one prediction per row: line, text, "
        "class name and each class's probability.")
    evaluate = sub.add_parser(
        "eval", help="accuracy of a kept adapter on a labeled file",
        description="Accuracy of an adapter folder on a .csv/.jsonl file whose every row has a "
        "label (a class index or class name), overall and per class.")
    for parser in (predict, evaluate):
        parser.add_argument("--adapter", type=Path, required=True,
                            help="adapter folder a run wrote (OUT/adapter, "
                            "OUT/adapters/METHOD-seedN)")
        parser.add_argument("--input", type=Path, required=True, help=".csv or .jsonl file")
        parser.add_argument("--backend", default="eager", choices=("eager", "executorch",
                                                                    "onnxruntime"),
                            help="eager PyTorch, or an exported program (needs --artefact)")
        parser.add_argument("--artefact", type=Path,
                            help="folder made by `lpfl export` for a program backend")
        parser.add_argument("--model", help="base model source instead of the one the adapter "
                            "records (e.g. after moving the model files)")
        parser.add_argument("--batch-size", type=int, default=32, help="texts scored at once")
    predict.add_argument("--output", type=Path,
                         help="write .csv or .jsonl (by suffix); JSON lines on stdout if omitted")
    predict.set_defaults(func=cmd_predict)
    evaluate.set_defaults(func=cmd_eval)


def _add_network_commands(sub: Any) -> None:
    """``lpfl server`` and ``lpfl client`` with the real LP-FL model behind them."""
    from lpfl.edge_client import cli as client_cli
    from lpfl.server import cli as server_cli

    def server(args: argparse.Namespace) -> int:
        from lpfl.server.lpfl_parts import lpfl_server_parts

        return server_cli.run(args, factory=lpfl_server_parts)

    def client(args: argparse.Namespace) -> int:
        from lpfl.edge_client.lpfl_trainer import lpfl_trainer

        return client_cli.run(args, trainer_factory=lpfl_trainer)

    server_cli.add_parser(sub).set_defaults(func=server)
    client_cli.add_parser(sub).set_defaults(func=client)
    launch = sub.add_parser("launch", help="a server and N client processes on loopback")
    launch.add_argument("--config", type=Path, required=True, help="TOML run file")
    launch.add_argument("--clients", type=int, default=3, help="number of client processes")
    launch.add_argument("--out", type=Path, required=True, help="output folder")
    launch.set_defaults(func=cmd_launch)
    from lpfl.harness.field import cli as field_cli

    field_cli.add_parser(sub)
    from lpfl.flower import cli as flower_cli

    flower_cli.add_parser(sub)


def _add_verbosity(parser: argparse.ArgumentParser, top: bool) -> None:
    """``-q``/``-v``; below the top level they default to nothing, so ``lpfl -v simulate`` and
    ``lpfl simulate -v`` both count."""
    default: Any = False if top else argparse.SUPPRESS
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", default=default,
                       help="only warnings and errors")
    group.add_argument("-v", "--verbose", action="store_true", default=default,
                       help="debug logging, and other libraries' start-up messages")


def _subparsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every subcommand's parser below ``parser``, at any depth."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield child
                yield from _subparsers(child)


def version() -> str:
    try:
        return importlib.metadata.version("lpfl")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lpfl", formatter_class=HelpFormatter,
        description="Federated few-shot LoRA fine-tuning of a prompted language model on edge "
        "devices. Every subcommand takes -q (warnings only) and -v (debug logging); Ctrl-C "
        "stops with exit code 130, keeping what the command has written so far.")
    parser.add_argument("--version", action="version", version=f"lpfl {version()}")
    _add_verbosity(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("simulate", help="run every configured method in one process")
    _add_config_args(sim)
    sim.add_argument("--out", required=True, help="output folder for results.json and report.md")
    sim.add_argument("--fresh", action="store_true", help="discard earlier results in --out")
    sim.set_defaults(func=cmd_simulate)
    _add_network_commands(sub)
    _add_adapter_commands(sub)
    compare = sub.add_parser(
        "compare", help="two runs side by side: config differences and outcomes",
        description="Print the config keys on which two results differ and every run of either "
        "by method and seed (final accuracy, rounds, uplink payload bytes, lpfl version and "
        "commit). Each argument is an output folder or a results.json, of a simulation, a "
        "benchmark or an aggregator.")
    compare.add_argument("run_a", type=Path, metavar="RUN_A")
    compare.add_argument("run_b", type=Path, metavar="RUN_B")
    compare.set_defaults(func=cmd_compare)
    from lpfl.export import cli as export_cli

    export_cli.add_parser(sub)
    from lpfl.android_harness import device_cli

    device_cli.add_parser(sub)
    bench = sub.add_parser("bench", help="benchmarks (resumable; results.json + report.md)")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    acc = bench_sub.add_parser("accuracy", help="methods × shots × partitions × seeds grid")
    acc.add_argument("--config", help="benchmark TOML (run sections + [bench]); not needed "
                     "with --report-only")
    acc.add_argument("--set", dest="overrides", action="append", default=[],
                     metavar="SECTION.KEY=VALUE", help="override one run config value")
    acc.add_argument("--out", default="runs/bench-accuracy",
                     help="output folder (resumes the runs there if they were made with the "
                          "same config, model and environment)")
    acc.add_argument("--only", help="comma-separated subset of bench.methods for this process "
                     "(run several processes on one --out to split the grid)")
    acc.add_argument("--report-only", action="store_true",
                     help="only rewrite report.md (and --readme) from --out's results.json")
    acc.add_argument("--readme", help="also rewrite this file's accuracy-benchmark block")
    acc.set_defaults(func=cmd_bench_accuracy)
    for child in _subparsers(parser):
        child.formatter_class = HelpFormatter
        _add_verbosity(child, top=False)
    return parser


def _verbosity(verbose: bool, quiet: bool) -> int:
    return logs.VERBOSE if verbose else logs.QUIET if quiet else logs.NORMAL


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    # Building the parser imports role modules, and some import torch: set up logging first.
    logs.configure(_verbosity(bool({"-v", "--verbose"} & set(words)),
                              bool({"-q", "--quiet"} & set(words))))
    args = build_parser().parse_args(words)
    logs.configure(_verbosity(args.verbose, args.quiet))
    try:
        return int(args.func(args))
    except LpflError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lpfl {args.command}: interrupted", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
