"""``lpfl server``: run the aggregator from a run file.

``lpfl server --config RUN.toml [--host H --port P] [--resume]`` serves ``federation.rounds``
rounds with the settings of the file's ``[server]`` table (see :mod:`lpfl.transport`) and
writes ``checkpoint.safetensors`` and ``results.json`` into ``server.run-dir``, and when the run
has finished, whatever the factory's ``finish`` keeps of the final state (the LP-FL factory: the
adapter folder ``run-dir/adapter``).
``lpfl server --make-cert DIR`` writes a self-signed ``cert.pem``/``key.pem`` for local ``wss://``.

The model-specific parts come from a :data:`ServerFactory` given to :func:`run`, so the command
works with any model: ``lpfl.cli`` registers it with the LP-FL factory, tests with a fake one.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lpfl.config import RunConfig
from lpfl.errors import LpflError
from lpfl.results import JsonResultsWriter, ResultsWriter
from lpfl.server.app import AggregatorServer, Evaluate, RunOutcome
from lpfl.server.background_eval import BackgroundEvaluator, EvaluationFactory
from lpfl.strategy import FedAvg
from lpfl.tls import make_self_signed_cert
from lpfl.tokens import load_tokens
from lpfl.transport import EvaluationMode, ServerSettings, load_server_config


@dataclass(frozen=True)
class ServerParts:
    """The model-specific pieces of a run, built from the run config by a factory. Without
    ``results``, the rounds go to ``RUN_DIR/results.json`` (:class:`JsonResultsWriter`).
    ``finish(final_state, run_dir)``, if given, keeps the final global state of a finished run
    and returns a line saying what it wrote. ``evaluation_factory`` builds ``evaluate`` again in
    another process, for ``server.evaluation = "background"``."""

    strategy: FedAvg
    initial_state: Mapping[str, torch.Tensor]
    evaluate: Evaluate
    results: ResultsWriter | None = None
    finish: Callable[[Mapping[str, torch.Tensor], Path], str] | None = None
    evaluation_factory: EvaluationFactory | None = None


ServerFactory = Callable[[RunConfig], ServerParts]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``server`` subcommand to an ``argparse`` subparsers object; its default ``func``
    is :func:`run` without a factory, so register ``functools.partial(run, factory=...)``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "server", help="run the federated aggregator (websockets)",
        description="Serve federation.rounds rounds to `lpfl client` processes with the run "
        "file's [server] settings; checkpoint.safetensors and results.json go to server.run-dir.")
    parser.add_argument("--config", type=Path, help="TOML run file with a [server] table")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE", help="override one config value (repeatable)")
    parser.add_argument("--host", help="interface to listen on (overrides server.host)")
    parser.add_argument("--port", type=int, help="port to listen on (overrides server.port)")
    parser.add_argument("--resume", action="store_true",
                        help="continue after the last round checkpointed in server.run-dir")
    parser.add_argument("--make-cert", metavar="DIR", type=Path,
                        help="write a self-signed cert.pem and key.pem into DIR and exit")
    parser.set_defaults(func=run)
    return parser


def server_settings(args: argparse.Namespace) -> tuple[RunConfig, ServerSettings]:
    """The run config and server settings from ``--config``, ``--set``, ``--host``, ``--port``."""
    if args.config is None:
        raise LpflError("lpfl server needs --config RUN.toml")
    config, settings = load_server_config(args.config, args.overrides)
    changes = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    return config, dataclasses.replace(settings, **changes)


def run(args: argparse.Namespace, factory: ServerFactory | None = None) -> int:
    """Carry out ``lpfl server``; 0 when every round is recorded, 1 when the run aborted."""
    if args.make_cert is not None:
        cert, key = make_self_signed_cert(args.make_cert)
        print(f"wrote {cert} and {key}; give clients --cafile {cert}")
        return 0
    if factory is None:
        raise LpflError("no model is wired to `lpfl server`: register run(args, factory=...)")
    config, settings = server_settings(args)
    if not settings.tokens_file:
        raise LpflError("server.tokens-file is not set: every client needs a token")
    tokens = load_tokens(settings.tokens_file)
    parts = factory(config)
    meta = {"config": config.to_dict(), "server": settings.to_dict()}
    results = parts.results or JsonResultsWriter(Path(settings.run_dir) / "results.json", meta)

    background = None
    if settings.evaluation is EvaluationMode.BACKGROUND:
        if parts.evaluation_factory is None:
            raise LpflError("server.evaluation = \"background\": this server's model parts "
                            "cannot evaluate in another process; use evaluation = \"inline\"")
        background = BackgroundEvaluator(parts.evaluation_factory, Path(settings.run_dir))

    async def serve() -> RunOutcome:
        server = AggregatorServer(
            strategy=parts.strategy, initial_state=parts.initial_state, evaluate=parts.evaluate,
            results=results, settings=settings, tokens=tokens, rounds=config.federation.rounds,
            resume=args.resume, background=background)
        return await server.run()

    try:
        outcome = asyncio.run(serve())
    except KeyboardInterrupt:
        print(f"interrupted: the rounds so far are in {settings.run_dir}; --resume continues "
              "after the last one", file=sys.stderr)
        raise
    print(f"{outcome.reason}: {len(outcome.rounds)} rounds recorded in {settings.run_dir}")
    if parts.finish is not None and outcome.completed:
        print(parts.finish(outcome.global_state, Path(settings.run_dir)))
    return 0 if outcome.completed else 1
