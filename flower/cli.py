"""``lpfl flower``: a run file on Flower, in the simulation engine or as a deployment."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

MODES = ("simulation", "deployment")
"""The values of :class:`lpfl.flower.launch.Mode` (importing it loads torch, which ``lpfl
--help`` should not wait for)."""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``flower`` subcommand to an ``argparse`` subparsers object."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "flower", help="the run on Flower: its simulation engine, or a SuperLink and SuperNodes",
        description="Run one method of a run file on Flower: 'simulation' starts a SuperLink "
        "with Flower's simulation engine and N virtual clients; 'deployment' starts a SuperLink "
        "and N SuperNode processes on loopback. Either way the lpfl Flower App is submitted "
        "with `flwr run`; results.json, report.md and the final global state land in --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("--config", type=Path, required=True, help="TOML run file")
    parser.add_argument("--clients", type=int, required=True,
                        help="clients (virtual or SuperNodes): the run file's data.num_clients")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--method", default="lp-fl", help="a federated method")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout-s", type=float, default=3600.0,
                        help="the most the whole run may take")
    parser.add_argument("--node-timeout-s", type=float, default=600.0,
                        help="how long to wait for the nodes and for each round's replies")
    parser.add_argument("--insecure", action="store_true",
                        help="serve the SuperLink over plain HTTP instead of TLS with a "
                             "self-signed certificate made for the run")
    parser.add_argument("--no-node-auth", action="store_true",
                        help="admit any SuperNode (by default each SuperNode gets a key pair "
                             "whose public key is registered with the SuperLink)")
    parser.add_argument("--backend", default="eager",
                        choices=("eager", "executorch", "onnxruntime"),
                        help="where the SuperNodes' rounds run (deployment only)")
    parser.add_argument("--artefact", type=Path,
                        help="the folder `lpfl export` made, for a program backend")
    parser.add_argument("--eager-training", action="store_true",
                        help="score with the program but train eagerly")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from lpfl.flower.launch import FlowerLaunch, Mode, launch_flower

    out = launch_flower(FlowerLaunch(args.config, Mode(args.mode), args.clients, args.out,
                                     args.method, args.seed, args.timeout_s,
                                     args.node_timeout_s, not args.insecure, args.backend,
                                     args.artefact, args.eager_training,
                                     not args.no_node_auth))
    print(f"wrote {out / 'results.json'} and {out / 'report.md'}")
    return 0
