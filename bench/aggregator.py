"""Aggregator benchmark: N simulated clients upload a SmolLM2-sized LoRA adapter.

Usage::

    python bench/aggregator.py --clients 10,100,1000 --out bench/results/aggregator
    python bench/aggregator.py --clients 1000 --encoding fp16 --max-concurrent-uploads 8

For each client count N this starts the real :class:`lpfl.server.app.AggregatorServer` in a child
process (so its peak resident memory is its own, not the clients'), then drives N real
:class:`lpfl.edge_client.connection.EdgeClient` objects over websockets on loopback from one
event loop in this process. One round; every client is sampled (``clients_per_round = N``,
``min_clients = N``) and uploads a fresh random adapter with the shapes of LoRA r=8 on ``q_proj``
and ``v_proj`` of SmolLM2-135M (30 layers, hidden 576, kv dim 192: 460,800 values in 120
tensors). Measured per N:

- round time: the server's own record (round start, i.e. tasks queued, to the round's close),
  and uploads per second = accepted updates / round time;
- the server's peak RSS (``VmHWM``) and its RSS sampled over time, split by round phase, so a
  peak can be blamed on connecting, training (task broadcast + uploads) or closing;
- bytes on the wire as the server's connections counted them (handshakes and framing included)
  beside the tensor payload bytes.

The goal: the server's peak memory should be O(model), independent of how
many clients upload. ``results.json`` and ``report.md`` (with ``aggregator.png``) in ``--out``
say whether it is.

The child process is this script again (``serve`` subcommand), so no test helper is involved.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import logging
import math
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from lpfl.edge_client.connection import ClientSettings, EdgeClient
from lpfl.protocol import RoundRules
from lpfl.records import ClientStatus
from lpfl.results import JsonResultsWriter, read_document
from lpfl.server.app import AggregatorServer
from lpfl.strategy import ClientUpdate, FedAvg
from lpfl.tensors import ENCODINGS, encode_tensors
from lpfl.tokens import make_tokens
from lpfl.trainer_api import device_capabilities, peak_rss_bytes

logger = logging.getLogger("bench.aggregator")

# SmolLM2-135M's attention: LoRA r=8 on q_proj (576 -> 576) and v_proj (576 -> 192).
LAYERS = 30
HIDDEN = 576
KV_DIM = 192
RANK = 8
TARGETS = {"q_proj": HIDDEN, "v_proj": KV_DIM}
"""Target module -> its output size (its input is always ``HIDDEN``)."""

DEFAULT_MAX_CONCURRENT_UPLOADS = 8
"""The server's own default (:class:`lpfl.transport.ServerSettings`), used unless told."""
DEADLINE_S = 900.0
"""Generous: the round should close because every client replied, never by the deadline."""
KEEPALIVE_S = 300.0
"""Ping interval on both sides: a busy 2-core loop must not fail pings mid-round."""
RSS_SAMPLE_S = 0.02
RESULTS_NAME = "results.json"
PORT_PREFIX = "PORT "


def lora_shapes() -> dict[str, tuple[int, int]]:
    """The adapter's tensor names and shapes, in PEFT's naming, built without any model."""
    shapes: dict[str, tuple[int, int]] = {}
    for layer in range(LAYERS):
        for module, out_features in TARGETS.items():
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            shapes[f"{prefix}.lora_A.weight"] = (RANK, HIDDEN)
            shapes[f"{prefix}.lora_B.weight"] = (out_features, RANK)
    return shapes


def random_adapter(seed: int, scale: float = 0.02) -> dict[str, torch.Tensor]:
    """A valid adapter (finite float32, the global state's keys and shapes) of random values."""
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=generator) * scale
            for name, shape in lora_shapes().items()}


def model_values() -> int:
    """Number of float values in the adapter (460,800 for SmolLM2)."""
    return sum(math.prod(shape) for shape in lora_shapes().values())


def raise_fd_limit(needed: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE to at least ``needed`` (up to the hard limit):
    every client is one socket on each side. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft < needed:
        raise RuntimeError(f"need {needed} file descriptors, the hard limit is {hard}")
    return soft


def fd_budget(clients: int) -> int:
    """File descriptors one side needs for ``clients`` connections, with room for the rest."""
    return clients + 256


def client_id(index: int) -> str:
    return f"bench-{index:05d}"


# The server process.


def _proc_status_bytes(field_name: str) -> int:
    """A ``kB`` line of /proc/self/status in bytes; 0 where there is no /proc."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class RssSampler:
    """Samples this process's RSS and the server's round phase every ``interval`` seconds in a
    thread, so the report can say in which phase the memory peak happened. ``VmHWM`` stays the
    authoritative peak: a spike shorter than the interval can slip between two samples."""

    def __init__(self, server: AggregatorServer, interval: float = RSS_SAMPLE_S) -> None:
        self._server = server
        self._interval = interval
        self._stop = threading.Event()
        self._start = time.monotonic()
        self.samples: list[tuple[float, int, str]] = []
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            phase = self._server.machine.phase.value
            self.samples.append((time.monotonic() - self._start, _proc_status_bytes("VmRSS"),
                                 phase))

    def peak_by_phase(self) -> dict[str, int]:
        """Highest sampled RSS in each round phase seen."""
        peaks: dict[str, int] = {}
        for _, rss, phase in self.samples:
            peaks[phase] = max(rss, peaks.get(phase, 0))
        return peaks

    def timeline(self, points: int = 400) -> list[tuple[float, int]]:
        """At most ``points`` (seconds, RSS) samples, keeping each stretch's highest one."""
        step = max(1, math.ceil(len(self.samples) / points))
        return [max(((t, rss) for t, rss, _ in self.samples[i : i + step]), key=lambda s: s[1])
                for i in range(0, len(self.samples), step)]


def _no_evaluation(round_number: int, state: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """The benchmark measures transport and aggregation, so the evaluation is free."""
    return {}


def _settings_for_round(round_number: int) -> dict[str, Any]:
    return {"round": round_number}


async def _serve(args: argparse.Namespace) -> dict[str, Any]:
    """Run one round with the real server; print the port once listening; return measurements."""
    from lpfl.transport import ServerSettings

    tokens: dict[str, str] = json.loads(Path(args.tokens).read_text(encoding="utf-8"))
    clients = len(tokens)
    rules = RoundRules(min_clients=clients, min_updates=clients, deadline_s=DEADLINE_S,
                       max_attempts=1, update_encoding=args.encoding)
    settings = ServerSettings(port=0, run_dir=args.run_dir, hello_timeout_s=60.0,
                              max_concurrent_uploads=args.max_concurrent_uploads,
                              ping_interval_s=KEEPALIVE_S, round=rules)
    initial = {name: torch.zeros(shape) for name, shape in lora_shapes().items()}
    server = AggregatorServer(
        strategy=FedAvg(clients, seed=0, round_settings=_settings_for_round),
        initial_state=initial, evaluate=_no_evaluation,
        results=JsonResultsWriter(Path(args.run_dir) / RESULTS_NAME), settings=settings,
        tokens=tokens, rounds=1)
    with RssSampler(server) as sampler:
        serving = asyncio.create_task(server.run())
        await server.started.wait()
        rss_listening = _proc_status_bytes("VmRSS")
        print(f"{PORT_PREFIX}{server.port}", flush=True)
        outcome = await serving
    return {"completed": outcome.completed, "reason": outcome.reason,
            "rss_listening_bytes": rss_listening, "peak_rss_bytes": peak_rss_bytes(),
            "peak_rss_by_phase": sampler.peak_by_phase(), "rss_timeline": sampler.timeline(),
            "phase_reached": server.machine.phase.value}


def serve_main(args: argparse.Namespace) -> int:
    """The ``serve`` subcommand: the server process of one measurement."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s server %(name)s %(levelname)s %(message)s")
    raise_fd_limit(fd_budget(args.clients))
    summary = asyncio.run(_serve(args))
    Path(args.summary).write_text(json.dumps(summary), encoding="utf-8")
    return 0 if summary["completed"] else 1


# The clients.


@dataclass
class RandomAdapterTrainer:
    """A trainer that "trains" instantly: it returns a fresh random adapter of the task's shapes.

    It is the thinnest thing the real :class:`EdgeClient` accepts, so everything else about a
    client (hello, task download and decoding, update encoding, chunked upload) is the real code.
    """

    index: int

    def capabilities(self) -> dict[str, Any]:
        return dict(device_capabilities("bench"))

    def train_round(self, round_number: int, global_state: dict[str, torch.Tensor],
                    settings: dict[str, Any]) -> ClientUpdate:
        generator = torch.Generator().manual_seed(self.index * 1_000_003 + round_number)
        state = {name: value + 0.02 * torch.randn(value.shape, generator=generator)
                 for name, value in global_state.items()}
        return ClientUpdate(client_id(self.index), state, 1 + self.index % 16,
                            {"train_loss": 1.0})


@dataclass(frozen=True)
class ClientsOutcome:
    """What the client side saw: rounds each client trained, its wire bytes, and how long the
    whole thing took from the first connection attempt to the last client's exit."""

    rounds_trained: list[int]
    errors: list[str]
    wire_bytes_out: int
    wire_bytes_in: int
    seconds: float


async def drive_clients(port: int, tokens: Mapping[str, str], timeout_s: float) -> ClientsOutcome:
    """Run one :class:`EdgeClient` per token against ``ws://127.0.0.1:port`` in this loop."""
    clients = [
        EdgeClient(ClientSettings(f"ws://127.0.0.1:{port}", cid, token, open_timeout_s=60.0,
                                  ping_interval_s=KEEPALIVE_S, backoff_initial_s=0.2,
                                  backoff_max_s=2.0, give_up_after_s=timeout_s),
                   RandomAdapterTrainer(index), rng=random.Random(index))
        for index, (cid, token) in enumerate(sorted(tokens.items()))
    ]
    start = time.perf_counter()
    results = await asyncio.wait_for(
        asyncio.gather(*(c.run() for c in clients), return_exceptions=True), timeout_s)
    seconds = time.perf_counter() - start
    rounds = [r if isinstance(r, int) else 0 for r in results]
    errors = [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
    return ClientsOutcome(rounds, errors, sum(c.wire_bytes_out for c in clients),
                          sum(c.wire_bytes_in for c in clients), seconds)


# One measurement.


@dataclass(frozen=True)
class BenchResult:
    """One client count's measurements (bytes are bytes, times are seconds)."""

    clients: int
    encoding: str
    max_concurrent_uploads: int
    model_values: int
    update_payload_bytes: int
    round_seconds: float
    uploads_accepted: int
    uploads_per_second: float
    clients_seconds: float
    server_peak_rss_bytes: int
    server_rss_listening_bytes: int
    server_peak_rss_by_phase: dict[str, int]
    wire_uplink_bytes: int
    wire_downlink_bytes: int
    payload_uplink_bytes: int
    payload_downlink_bytes: int
    client_wire_bytes_out: int
    client_errors: list[str]
    rss_timeline: list[tuple[float, int]] = field(repr=False)

    @property
    def key(self) -> tuple[int, str, int]:
        return (self.clients, self.encoding, self.max_concurrent_uploads)


def run_benchmark(clients: int, workdir: Path, encoding: str = "fp32",
                  max_concurrent_uploads: int = DEFAULT_MAX_CONCURRENT_UPLOADS,
                  timeout_s: float = 600.0) -> BenchResult:
    """Measure one round of ``clients`` uploads; ``workdir`` receives the server's files.

    Raises :class:`RuntimeError` if the server process fails or the round does not complete.
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding {encoding!r} is not one of {ENCODINGS}")
    workdir.mkdir(parents=True, exist_ok=True)
    raise_fd_limit(fd_budget(clients))
    tokens = make_tokens(client_id(i) for i in range(clients))
    tokens_file, summary_file = workdir / "tokens.json", workdir / "server.json"
    tokens_file.write_text(json.dumps(tokens), encoding="utf-8")
    run_dir = workdir / "server"
    command = [sys.executable, str(Path(__file__).resolve()), "serve", "--clients", str(clients),
               "--tokens", str(tokens_file), "--run-dir", str(run_dir), "--summary",
               str(summary_file), "--encoding", encoding, "--max-concurrent-uploads",
               str(max_concurrent_uploads)]
    with open(workdir / "server.log", "wb") as log, subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=log) as server:
        assert server.stdout is not None
        line = server.stdout.readline().decode()
        if not line.startswith(PORT_PREFIX):
            server.kill()
            raise RuntimeError(f"the server did not start: {_tail(workdir / 'server.log')}")
        try:
            seen = asyncio.run(drive_clients(int(line[len(PORT_PREFIX):]), tokens, timeout_s))
            code = server.wait(timeout=60)
        except BaseException:
            server.kill()
            raise
    if code != 0 or not summary_file.is_file():
        raise RuntimeError(f"the server exited with {code}: {_tail(workdir / 'server.log')}")
    summary = json.loads(summary_file.read_text(encoding="utf-8"))
    record = read_document(run_dir / RESULTS_NAME)["runs"][0]["records"][0]
    accepted = sum(1 for c in record["clients"] if c["status"] == ClientStatus.UPDATED)
    round_seconds = float(record["seconds"])
    return BenchResult(
        clients=clients, encoding=encoding, max_concurrent_uploads=max_concurrent_uploads,
        model_values=model_values(),
        update_payload_bytes=len(encode_tensors(random_adapter(0), encoding)),
        round_seconds=round_seconds, uploads_accepted=accepted,
        uploads_per_second=accepted / round_seconds, clients_seconds=seen.seconds,
        server_peak_rss_bytes=int(summary["peak_rss_bytes"]),
        server_rss_listening_bytes=int(summary["rss_listening_bytes"]),
        server_peak_rss_by_phase={k: int(v) for k, v in summary["peak_rss_by_phase"].items()},
        wire_uplink_bytes=int(record["wire_uplink_bytes"]),
        wire_downlink_bytes=int(record["wire_downlink_bytes"]),
        payload_uplink_bytes=int(record["payload_uplink_bytes"]),
        payload_downlink_bytes=int(record["payload_downlink_bytes"]),
        client_wire_bytes_out=seen.wire_bytes_out, client_errors=seen.errors[:10],
        rss_timeline=[(float(t), int(r)) for t, r in summary["rss_timeline"]])


def _tail(path: Path, chars: int = 2000) -> str:
    return path.read_text(encoding="utf-8", errors="replace")[-chars:] if path.is_file() else ""


# Results and report.


def environment() -> dict[str, Any]:
    """What the numbers were measured on."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        memory = 0
    return {"python": platform.python_version(), "torch": torch.__version__,
            "websockets": importlib.metadata.version("websockets"), "cpu_count": os.cpu_count(),
            "machine": platform.machine(), "system": platform.system(),
            "memory_bytes": memory}


def merge_results(path: Path, new: Sequence[BenchResult]) -> list[dict[str, Any]]:
    """Entries of ``path`` (if any) with ``new`` replacing those of the same client count,
    encoding and upload bound, sorted; so a later run adds to, not wipes, a scaling series."""
    entries: dict[tuple[int, str, int], dict[str, Any]] = {}
    if path.is_file():
        for entry in json.loads(path.read_text(encoding="utf-8")).get("runs", []):
            entries[(entry["clients"], entry["encoding"], entry["max_concurrent_uploads"])] = entry
    for result in new:
        entries[result.key] = asdict(result)
    return [entries[key] for key in sorted(entries)]


def marginal_bytes_per_client(series: Sequence[Mapping[str, Any]]) -> float | None:
    """Least-squares slope of server peak RSS over client count, in bytes per client."""
    if len({e["clients"] for e in series}) < 2:
        return None
    xs = [float(e["clients"]) for e in series]
    ys = [float(e["server_peak_rss_bytes"]) for e in series]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs)


O_MODEL_FRACTION = 0.05
"""Peak memory counts as O(model) when each extra client adds less than this fraction of one
update payload: then at most a fixed number of updates is held at once, and what grows with the
client count is only per-connection bookkeeping."""


def verdict(series: Sequence[Mapping[str, Any]]) -> tuple[str, float | None]:
    """``("O(model)" | "O(clients)" | "n/a", slope)`` for one encoding's scaling series."""
    slope = marginal_bytes_per_client(series)
    if slope is None:
        return "n/a", None
    update = float(series[0]["update_payload_bytes"])
    return ("O(model)" if slope < O_MODEL_FRACTION * update else "O(clients)"), slope


def _mib(value: float) -> str:
    return f"{value / 2**20:.1f}"


def plot(entries: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Peak RSS vs clients, round time vs clients, and the RSS timelines, one line per series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (memory, seconds, timeline) = plt.subplots(1, 3, figsize=(15, 4.2))
    for (encoding, bound), series in _series(entries).items():
        label = f"{encoding}, {bound} upload slots"
        counts = [e["clients"] for e in series]
        memory.plot(counts, [e["server_peak_rss_bytes"] / 2**20 for e in series], "o-",
                    label=label)
        seconds.plot(counts, [e["round_seconds"] for e in series], "o-", label=label)
        for entry in series:
            ts = [t for t, _ in entry["rss_timeline"]]
            timeline.plot(ts, [r / 2**20 for _, r in entry["rss_timeline"]],
                          label=f"{entry['clients']} clients, {encoding}")
    memory.set(xscale="log", xlabel="clients", ylabel="server peak RSS (MiB)",
               title="Server peak memory", ylim=(0, None))
    seconds.set(xscale="log", yscale="log", xlabel="clients", ylabel="round time (s)",
                title="Round time (start to close)")
    timeline.set(xlabel="seconds since the server started", ylabel="server RSS (MiB)",
                 title="Server RSS over the run", ylim=(0, None))
    for axes in (memory, seconds, timeline):
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _series(entries: Sequence[Mapping[str, Any]]) -> dict[tuple[str, int], list[Mapping[str, Any]]]:
    """Entries grouped by (encoding, upload bound), each group sorted by client count."""
    groups: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
    for entry in sorted(entries, key=lambda e: e["clients"]):
        groups.setdefault((entry["encoding"], entry["max_concurrent_uploads"]), []).append(entry)
    return groups


def report(entries: Sequence[Mapping[str, Any]], env: Mapping[str, Any],
           commands: Sequence[str]) -> str:
    """``report.md``: the table, the memory verdict per series, and the plot."""
    lines = [
        "# Aggregator benchmark", "",
        *(f"    {command}" for command in commands), "",
        f"Environment: {', '.join(f'{k} {v}' for k, v in env.items())}.", "",
        "One round on loopback: the real `AggregatorServer` in its own process, N real "
        "`EdgeClient`s in one event loop of another, each uploading a random SmolLM2 LoRA "
        f"adapter (r={RANK} on q_proj and v_proj, {model_values():,} values in "
        f"{len(lora_shapes())} tensors). Round time is the server's (tasks queued to round "
        "closed); uploads/s = accepted updates / round time; peak RSS is the server process's "
        "`VmHWM`; wire bytes are what the server's connections read (up) and wrote (down), "
        "handshakes and framing included.", "",
        "| clients | encoding | upload slots | round (s) | uploads/s | server peak RSS (MiB) | "
        "RSS listening (MiB) | peak in phase (MiB) | wire up (MiB) | payload up (MiB) | "
        "wire overhead up | wire down (MiB) | client errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in sorted(entries, key=lambda e: (e["encoding"], e["max_concurrent_uploads"],
                                             e["clients"])):
        phases = ", ".join(f"{p} {_mib(v)}" for p, v in e["server_peak_rss_by_phase"].items())
        overhead = e["wire_uplink_bytes"] / max(e["payload_uplink_bytes"], 1) - 1
        lines.append(
            f"| {e['clients']} | {e['encoding']} | {e['max_concurrent_uploads']} | "
            f"{e['round_seconds']:.2f} | {e['uploads_per_second']:.1f} | "
            f"{_mib(e['server_peak_rss_bytes'])} | {_mib(e['server_rss_listening_bytes'])} | "
            f"{phases} | {_mib(e['wire_uplink_bytes'])} | {_mib(e['payload_uplink_bytes'])} | "
            f"{overhead:.2%} | {_mib(e['wire_downlink_bytes'])} | {len(e['client_errors'])} |")
    lines += ["", "## Is the server's memory O(model)?", ""]
    for (encoding, bound), series in _series(entries).items():
        name, slope = verdict(series)
        update = series[0]["update_payload_bytes"]
        if slope is None:
            lines.append(f"- {encoding}, {bound} upload slots: one client count only; run "
                         "several (`--clients 10,100,1000`) to see the scaling.")
            continue
        growth = series[-1]["server_peak_rss_bytes"] - series[0]["server_peak_rss_bytes"]
        lines.append(
            f"- {encoding}, {bound} upload slots: **{name}**. Peak RSS grows by "
            f"{_mib(growth)} MiB from {series[0]['clients']} to {series[-1]['clients']} clients; "
            f"the fitted slope is {slope / 1024:.1f} KiB per client, {slope / update:.1%} of one "
            f"update payload ({_mib(update)} MiB). The verdict is O(model) when that fraction "
            f"is under {O_MODEL_FRACTION:.0%}.")
    lines += ["", "![aggregator](aggregator.png)", ""]
    return "\n".join(lines)


def write_outputs(out: Path, results: Sequence[BenchResult], command: str) -> list[dict[str, Any]]:
    """Merge ``results`` into ``out/results.json``, then rewrite ``report.md`` and the plot.

    The document keeps every command that contributed entries, so the report says how to
    reproduce all of them, not only the latest."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS_NAME
    previous = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    commands = [c for c in previous.get("commands", []) if c != command] + [command]
    entries = merge_results(path, results)
    env = environment()
    document = {"benchmark": "aggregator", "commands": commands, "environment": env,
                "runs": entries}
    path.write_text(json.dumps(document, indent=1), encoding="utf-8")
    plot(entries, out / "aggregator.png")
    (out / "report.md").write_text(report(entries, env, commands), encoding="utf-8")
    return entries


# Command line.


def _client_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("client counts must be integers >= 1")
    return counts


def parser() -> argparse.ArgumentParser:
    """``python bench/aggregator.py [--clients N,M,...] [--out DIR] ...`` or ``... serve``."""
    main = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    main.add_argument("--clients", type=_client_counts, default=[1000],
                      help="client count, or a comma-separated list to measure the scaling")
    main.add_argument("--out", type=Path, default=Path("bench/results/aggregator"))
    main.add_argument("--encoding", choices=ENCODINGS, default="fp32",
                      help="update encoding the server asks for (tasks are always fp32)")
    main.add_argument("--max-concurrent-uploads", type=int,
                      default=DEFAULT_MAX_CONCURRENT_UPLOADS,
                      help="the server's bound on update payloads received at once")
    main.add_argument("--timeout", type=float, default=600.0,
                      help="seconds one client count may take before it is abandoned")
    sub = main.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="internal: the server process of one measurement")
    serve.add_argument("--clients", type=int, required=True)
    serve.add_argument("--tokens", required=True)
    serve.add_argument("--run-dir", required=True)
    serve.add_argument("--summary", required=True)
    serve.add_argument("--encoding", choices=ENCODINGS, required=True)
    serve.add_argument("--max-concurrent-uploads", type=int, required=True)
    return main


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "serve":
        return serve_main(args)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s clients %(name)s %(levelname)s %(message)s")
    command = "python bench/aggregator.py " + " ".join(
        sys.argv[1:] if argv is None else list(argv))
    results = []
    with tempfile.TemporaryDirectory(prefix="lpfl-bench-") as scratch:
        for clients in args.clients:
            result = run_benchmark(clients, Path(scratch) / str(clients), args.encoding,
                                   args.max_concurrent_uploads, args.timeout)
            results.append(result)
            print(f"{clients:5d} clients: round {result.round_seconds:7.2f} s, "
                  f"{result.uploads_per_second:7.1f} uploads/s, server peak RSS "
                  f"{_mib(result.server_peak_rss_bytes)} MiB, "
                  f"{result.uploads_accepted}/{clients} uploads accepted", flush=True)
    write_outputs(args.out, results, command)
    print(f"wrote {args.out / RESULTS_NAME} and {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
