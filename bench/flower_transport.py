"""Flower's transport against lpfl's websockets, and the Flower path's server memory at scale.

Usage::

    python bench/flower_transport.py --out bench/results/flower [--work runs/flower-bench] \
        [--encodings fp32,fp16,int8] [--virtual 10,100,1000] [--skip-transport]

Two parts, both with real processes on loopback:

* **transport** (SmolLM2-135M, LoRA r=8 on q_proj/v_proj, 2 clients, 2 rounds of one local step,
  no soft labels, evaluation on 20 test sentences), once per update encoding: ``lpfl launch``
  (the websocket aggregator and two ``lpfl client`` processes over ``ws://``; bytes counted by the
  server's connections) and ``lpfl flower deployment --insecure`` (a SuperLink and two SuperNodes
  reaching it over plain HTTP through a counting TCP relay): no TLS on either side. Both carry
  the same lpfl payloads (the Flower app sends them as one ``uint8`` array), so the difference
  is framing, polling and set-up. Reported per round: payload
  bytes, bytes on the wire both ways, and the round time the server recorded.
* **memory** (tiny-llama, one round, 10 sampled clients): ``lpfl flower simulation`` with N
  virtual clients; the resident memory of the SuperLink's process tree is sampled every 0.2 s
  and split into the server side (SuperLink, simulation runtime with the ServerApp) and Ray (the
  ClientApp actors and Ray's daemons).

Times are wall-clock on this machine and depend on its load: ``results.json`` records the load
average next to the CPU. The runs themselves (run files, logs, adapters) go to ``--work``;
``--out`` gets ``results.json`` and ``report.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil

from lpfl.benchmark import environment
from lpfl.config import ModelSettings
from lpfl.flower.launch import FlowerLaunch, Mode, launch_flower
from lpfl.harness.field.delay_proxy import ProxyGroup
from lpfl.harness.launch import launch
from lpfl.results import read_document

TRANSPORT_RUN = """
[model]
source = "smollm2"
max_length = 64

[soft_labels]
start_round = 3

[data]
dataset = "mr"
test_size = 1000
test_limit = 20
validation_size = 0
shots_per_class = 4
unlabeled_per_client = 8
num_clients = 2

[federation]
rounds = 2
clients_per_round = 2
local_steps = 1
batch_size = 2

[run]
methods = ["lp-fl"]
threads = 1
eval_batch_size = 32

[server.round]
update-encoding = "{encoding}"
"""

MEMORY_RUN = """
[model]
source = "tiny-llama"
max_length = 48

[data]
dataset = "mr"
test_size = 100
validation_size = 0
shots_per_class = {shots}
unlabeled_per_client = 4
num_clients = {clients}

[federation]
rounds = 1
clients_per_round = 10
local_steps = 1
batch_size = 2

[run]
threads = 1
eval_batch_size = 64
"""


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@contextlib.contextmanager
def counting_relay(counts: dict[str, int], port: int) -> Iterator[int]:
    """A relay to ``port`` that adds into ``counts`` the bytes it forwarded each way."""
    group = ProxyGroup([("127.0.0.1", 0.0)], "127.0.0.1", port)
    with group as (relay_port,):
        yield relay_port
    for direction, chunks in group.proxies[0].chunks.items():
        counts[direction] = counts.get(direction, 0) + sum(c.nbytes for c in chunks)


def websocket_run(run_file: Path, out: Path) -> dict[str, Any]:
    """``lpfl launch`` with 2 clients: per-round payload and wire bytes and seconds."""
    launch(run_file, 2, out, timeout_s=1800)
    rounds = read_document(out / "results.json")["runs"][0]["records"]
    return {"rounds": len(rounds),
            "payload_uplink_bytes": sum(r["payload_uplink_bytes"] for r in rounds),
            "payload_downlink_bytes": sum(r["payload_downlink_bytes"] for r in rounds),
            "wire_uplink_bytes": sum(r["wire_uplink_bytes"] for r in rounds),
            "wire_downlink_bytes": sum(r["wire_downlink_bytes"] for r in rounds),
            "round_seconds": [r["seconds"] for r in rounds]}


def flower_run(run_file: Path, out: Path) -> dict[str, Any]:
    """``lpfl flower deployment`` with 2 SuperNodes behind a counting relay."""
    counts: dict[str, int] = {}
    launch_flower(FlowerLaunch(run_file, Mode.DEPLOYMENT, 2, out, timeout_s=1800, tls=False),
                  relay=lambda port: counting_relay(counts, port))
    (run,) = json.loads((out / "results.json").read_text())["runs"]
    rounds = run["rounds"]
    return {"rounds": len(rounds),
            "payload_uplink_bytes": sum(r["uplink_bytes"] for r in rounds),
            "payload_downlink_bytes": sum(r["downlink_bytes"] for r in rounds),
            "wire_uplink_bytes": counts.get("up", 0),
            "wire_downlink_bytes": counts.get("down", 0),
            "round_seconds": [r["seconds"] for r in rounds]}


def transport(out: Path, encodings: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    for encoding in encodings:
        run_file = _write(out / f"transport-{encoding}.toml",
                          TRANSPORT_RUN.format(encoding=encoding))
        for name, run in (("websockets", websocket_run), ("flower", flower_run)):
            print(f"transport: {name}, {encoding} updates", flush=True)
            measured = run(run_file, out / f"{name}-{encoding}")
            rows.append({"transport": name, "encoding": encoding, **measured})
    return rows


def _side(process: psutil.Process) -> str | None:
    """``ray`` for Ray's processes (ClientApp actors, daemons), ``server`` for the SuperLink and
    the simulation runtime that holds the ServerApp, None for anything else (``flwr run``)."""
    with contextlib.suppress(psutil.Error):
        line = " ".join(process.cmdline()).lower()
        if "ray" in line and "flower-superlink" not in line:
            return "ray"
        if any(name in line for name in ("flower-superlink", "flwr-simulation",
                                         "flwr-serverapp", "flower-superexec")):
            return "server"
    return None


class TreeSampler:
    """Samples the resident memory of this process's descendants, server side and Ray apart."""

    def __init__(self, every_s: float = 0.2) -> None:
        self.me = psutil.Process()
        self.every_s = every_s
        self.peak = {"server": 0, "ray": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            totals = {"server": 0, "ray": 0}
            with contextlib.suppress(psutil.Error):
                for process in self.me.children(recursive=True):
                    side = _side(process)
                    if side is not None:
                        with contextlib.suppress(psutil.Error):
                            totals[side] += process.memory_info().rss
            for key, value in totals.items():
                self.peak[key] = max(self.peak[key], value)
            self._stop.wait(self.every_s)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def memory(out: Path, sizes: Sequence[int]) -> list[dict[str, Any]]:
    rows = []
    for clients in sizes:
        print(f"memory: {clients} virtual clients", flush=True)
        shots = max(8, (clients + 1) // 2)
        run_file = _write(out / f"memory-{clients}.toml",
                          MEMORY_RUN.format(shots=shots, clients=clients))
        folder = out / f"memory-{clients}"
        started = time.perf_counter()
        with TreeSampler() as sampler:
            launch_flower(FlowerLaunch(run_file, Mode.SIMULATION, clients, folder,
                                       timeout_s=3600, node_timeout_s=1800))
        (run,) = json.loads((folder / "results.json").read_text())["runs"]
        rows.append({"virtual_clients": clients, "seconds": time.perf_counter() - started,
                     "round_seconds": run["rounds"][0]["seconds"],
                     "server_peak_rss_bytes": sampler.peak["server"],
                     "ray_peak_rss_bytes": sampler.peak["ray"]})
    return rows


def report(results: dict[str, Any]) -> str:
    env = results["environment"]
    lines = ["# Flower's transport against lpfl's websockets", "",
             f"Measured on {env['cpu']} ({', '.join(env['cpu_features'])}, "
             f"{env['cpu_count']} cores), load average {results['load_average']} at the start; "
             f"flwr {results['flwr']}. Command: `python bench/flower_transport.py`.", ""]
    if results["transport"]:
        lines += ["## Bytes and round time per round (SmolLM2-135M LoRA r=8, 2 clients)", "",
                  "| encoding | transport | payload up | wire up | overhead up | payload down "
                  "| wire down | overhead down | round s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for row in results["transport"]:
            n = row["rounds"]

            def per(key: str, row: dict[str, Any] = row, n: int = n) -> int:
                return int(row[key] / n)

            over_up = row["wire_uplink_bytes"] / row["payload_uplink_bytes"] - 1
            over_down = row["wire_downlink_bytes"] / row["payload_downlink_bytes"] - 1
            seconds = sum(row["round_seconds"]) / n
            lines.append(f"| {row['encoding']} | {row['transport']} | "
                         f"{per('payload_uplink_bytes'):,} | {per('wire_uplink_bytes'):,} | "
                         f"{over_up:+.2%} | {per('payload_downlink_bytes'):,} | "
                         f"{per('wire_downlink_bytes'):,} | {over_down:+.2%} | {seconds:.1f} |")
        lines += ["", "Wire bytes are everything that crossed the clients' connections during "
                  "the run (set-up, polling and the end of the run included), divided by the "
                  "rounds; payload bytes are lpfl's tensor payloads, the same on both paths.", ""]
    if results["memory"]:
        lines += ["## The Flower simulation's memory (tiny-llama, 10 clients sampled)", "",
                  "| virtual clients | server peak RSS MiB | Ray peak RSS MiB | round s | run s |",
                  "|---|---|---|---|---|"]
        for row in results["memory"]:
            lines.append(f"| {row['virtual_clients']:,} | "
                         f"{row['server_peak_rss_bytes'] / 2**20:.0f} | "
                         f"{row['ray_peak_rss_bytes'] / 2**20:.0f} | "
                         f"{row['round_seconds']:.1f} | {row['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("runs/flower-bench"))
    parser.add_argument("--encodings", default="fp32,fp16,int8")
    parser.add_argument("--virtual", default="10,100,1000")
    parser.add_argument("--skip-transport", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args(argv)
    import flwr

    results: dict[str, Any] = {
        "environment": environment(ModelSettings(source="smollm2")), "flwr": flwr.__version__,
        "load_average": [round(x, 2) for x in os.getloadavg()], "transport": [], "memory": []}
    if not args.skip_transport:
        results["transport"] = transport(args.work, args.encodings.split(","))
    if not args.skip_memory:
        results["memory"] = memory(args.work, [int(n) for n in args.virtual.split(",")])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "report.md").write_text(report(results))
    print(f"wrote {args.out / 'results.json'} and {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
