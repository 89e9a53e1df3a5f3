"""``lpfl client``: run one edge client against an aggregator.

``lpfl client --server ws://HOST:PORT --client-id ID --token T`` connects, trains each round it
is sampled for, and exits 0 when the server says the run is finished. The token may also come
from the ``LPFL_TOKEN`` environment variable (it then stays out of the process list). For a
self-signed ``wss://`` server, pass its certificate with ``--cafile``. With ``--data FILE`` the
client trains on the device's own texts; without it, on its share of the run's corpus.

The trainer comes from a :data:`TrainerFactory` given to :func:`run`: ``lpfl.cli`` registers the
LP-FL one, tests a fake one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lpfl.edge_client.connection import ClientSettings, EdgeClient
from lpfl.errors import LpflError
from lpfl.trainer_api import Trainer

TrainerFactory = Callable[[argparse.Namespace], Trainer]
"""Builds the trainer from the parsed arguments (``client_id``, ``config``, ...)."""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``client`` subcommand to an ``argparse`` subparsers object; its default ``func``
    is :func:`run` without a factory, so register ``functools.partial(run, trainer_factory=...)``.
    """
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "client", help="run one federated edge client (websockets)",
        description="Connect to an `lpfl server`, train each round this client is sampled for, "
        "and exit 0 when the server says the run is finished.")
    parser.add_argument("--server", required=True, help="ws://host:port or wss://host:port")
    parser.add_argument("--client-id", required=True, help="this client's id (as in the tokens)")
    parser.add_argument("--token", default=os.environ.get("LPFL_TOKEN", ""),
                        help="this client's secret token (default: $LPFL_TOKEN)")
    parser.add_argument("--cafile", default="", help="PEM certificate to trust for wss://")
    parser.add_argument("--config", type=Path, help="TOML run file for the trainer, if needed")
    parser.add_argument("--data", type=Path,
                        help="this device's own .csv/.jsonl file (text, label; an empty label is "
                        "an unlabeled row); the texts never leave the device. Without it, the "
                        "client takes its client-N share of the run's corpus (experiments)")
    parser.add_argument("--backend", default="eager", choices=("eager", "executorch",
                                                                "onnxruntime"),
                        help="where soft-labelling runs; executorch and onnxruntime need "
                        "--artefact")
    parser.add_argument("--artefact", type=Path,
                        help="folder made by `lpfl export` for a program backend")
    parser.add_argument("--eager-training", action="store_true",
                        help="train eagerly even if the artefact has an ExecuTorch training "
                        "program")
    parser.add_argument("--profile", type=Path,
                        help="device profile TOML (or the name of a shipped profile): its threads, "
                        "and a memory check before the first round")
    parser.add_argument("--give-up-after-s", type=float, default=600.0,
                        help="stop after this long without reaching the server")
    parser.add_argument("--backoff-max-s", type=float, default=30.0,
                        help="longest wait between reconnection attempts")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace, trainer_factory: TrainerFactory | None = None) -> int:
    """Carry out ``lpfl client``; 0 once the server says the run is finished."""
    if trainer_factory is None:
        raise LpflError("no trainer is wired to `lpfl client`: register "
                        "run(args, trainer_factory=...)")
    settings = ClientSettings(args.server, args.client_id, args.token, cafile=args.cafile,
                              give_up_after_s=args.give_up_after_s,
                              backoff_max_s=args.backoff_max_s)
    client = EdgeClient(settings, trainer_factory(args))
    rounds = asyncio.run(client.run())
    print(f"client {settings.client_id}: trained {rounds} rounds; the run is finished")
    return 0
