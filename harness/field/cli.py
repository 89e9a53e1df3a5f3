"""``lpfl field``: measure LP-FL against FP-FL with real client processes on shaped links.

``lpfl field --config RUN.toml --profiles lte,3g,wifi --clients N --rounds R
--methods lp-fl,fp-fl --out DIR [--time-budget-s S]`` needs root (namespaces, veth, tc). A run
file with a ``[field.fleet]`` (:mod:`lpfl.fleet`) sets the clients, their links and devices
instead of ``--profiles`` and ``--clients``, and needs cgroups for the CPU quotas. Without
it the command says so and exits 2 before creating anything. ``--set`` overrides the run file
for the server and the clients (``--set server.round.close-after=3``); ``--target-from
RESULTS.json`` takes the time-to-target accuracy from a reference run. ``lpfl field
--cleanup`` removes what killed runs left behind (every run also does so before it starts);
``lpfl field --out DIR --report-only`` rewrites DIR's report from the ``field.json`` files
there (after an interrupted run), without root.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
from pathlib import Path
from typing import Any

from lpfl.errors import LpflError
from lpfl.fleet import load_fleet
from lpfl.harness.field.netns import missing_privileges, sweep
from lpfl.harness.field.target import Target, given_target, target_from_results
from lpfl.methods import METHODS
from lpfl.profiles.links import LINKS_FILE


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``field`` subcommand to an ``argparse`` subparsers object."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "field", help="real clients in network namespaces on shaped links (needs root)",
        description="Run a server and N client processes, each client in its own network "
        "namespace behind a tc-shaped veth link and a delay proxy, once per link profile and "
        "method; write DIR/report.md with plots of bytes, seconds and accuracy.")
    parser.add_argument("--config", type=Path, help="TOML run file (required unless --cleanup)")
    parser.add_argument("--links", type=Path,
                        help="TOML link profiles (default: the ones lpfl ships: lte, 3g, wifi)")
    parser.add_argument("--profiles",
                        help="comma-separated profile names (default lte,3g,wifi)")
    parser.add_argument("--clients", type=int, help="client processes (default 2)")
    parser.add_argument("--rounds", type=int, help="rounds per run (default federation.rounds)")
    parser.add_argument("--methods", default="lp-fl,fp-fl",
                        help="comma-separated methods")
    parser.add_argument("--out", type=Path, help="output folder (required unless --cleanup)")
    parser.add_argument("--time-budget-s", type=float, default=math.inf,
                        help="wall-clock budget per FP-FL run: fewer rounds are measured and "
                        "the rest extrapolated (labelled so)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE",
                        help="override one run-file value for the server and the clients, e.g. "
                        "server.round.close-after=3 (repeatable)")
    parser.add_argument("--target-accuracy", type=float,
                        help="accuracy for the time-to-target figures (default: the lowest of "
                        "the methods' best accuracies on each profile)")
    parser.add_argument("--target-from", type=Path, metavar="RESULTS",
                        help="take the target accuracy from a reference run's results.json "
                        "(e.g. `lpfl simulate` of centralized or fp-fl on the same data): its "
                        "final accuracy, the mean over its seeds")
    parser.add_argument("--target-method",
                        help="the method of --target-from's file to use (needed when it holds "
                        "several)")
    parser.add_argument("--verify-seconds", type=float, default=2.0,
                        help="seconds of each shaping check transfer")
    parser.add_argument("--report-only", action="store_true",
                        help="only rewrite OUT/report.md and its plots from the field.json files "
                        "under --out (e.g. after an interrupted run); needs no root")
    parser.add_argument("--cleanup", action="store_true",
                        help="only remove the namespaces, links and processes of field runs "
                        "whose orchestrator was killed, then exit")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Carry out ``lpfl field``; 2 (with nothing created) when this host cannot shape links."""
    if args.report_only:
        if args.out is None:
            raise LpflError("--report-only needs --out")
        from lpfl.harness.field.report import write_field_report

        print(f"wrote {write_field_report(args.out, _target(args, None))}")
        return 0
    reason = missing_privileges()
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    if args.cleanup:
        removed = sweep()
        print(f"removed the leftovers of {', '.join(removed)}" if removed
              else "nothing left behind by killed field runs")
        return 0
    if args.config is None or args.out is None:
        raise LpflError("--config and --out are required (unless --cleanup)")
    from lpfl.harness.field.run import FieldPlan, field
    from lpfl.transport import load_server_config

    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise LpflError(f"--methods: unknown {', '.join(unknown)}")
    fleet = load_fleet(args.config)
    given = [f"--{name}" for name in ("links", "profiles", "clients")
             if getattr(args, name) is not None]
    if fleet is not None and given:
        raise LpflError(f"{args.config} has a [field.fleet], which sets the clients and their "
                        f"links: drop {', '.join(given)} (or the fleet)")
    clients = 2 if args.clients is None else args.clients
    if clients < 1:
        raise LpflError("--clients must be at least 1")
    config = load_server_config(args.config, args.overrides)[0]
    rounds = config.federation.rounds if args.rounds is None else args.rounds
    plan = FieldPlan(config=args.config, links=args.links or LINKS_FILE,
                     profiles=[p for p in (args.profiles or "lte,3g,wifi").split(",") if p],
                     clients=clients, rounds=rounds, methods=methods, out=args.out,
                     time_budget_s=args.time_budget_s, verify_seconds=args.verify_seconds,
                     target=_target(args, config.to_dict()["data"]), fleet=fleet,
                     overrides=args.overrides)
    # A plain `kill` should still remove the namespaces: make SIGTERM unwind like Ctrl-C does.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    report = field(plan)
    print(f"wrote {report}")
    return 0


def _target(args: argparse.Namespace, data: dict[str, Any] | None) -> Target | None:
    """The target of ``--target-accuracy`` or ``--target-from`` (None: the report's default).
    ``data``: the run's ``[data]`` table, which a reference must share the test split of."""
    if args.target_accuracy is not None and args.target_from is not None:
        raise LpflError("give --target-accuracy or --target-from, not both")
    if args.target_from is not None:
        return target_from_results(args.target_from, args.target_method, data)
    if args.target_method is not None:
        raise LpflError("--target-method names a method of --target-from's file: give both")
    return None if args.target_accuracy is None else given_target(args.target_accuracy)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)
