"""``lpfl launch``: a server and N client processes on loopback, with progress and a report.

This is the demo and the quickest way to see a real federated run: it writes a tokens file, starts
``lpfl server`` and ``lpfl client`` as separate processes (they talk websockets over 127.0.0.1),
prints each round as the server records it, and when the run is over writes ``report.md`` and
``report.png`` beside the server's ``results.json``: accuracy per round, bytes on the wire next to
payload bytes, and what FP-FL clients would have sent for the same rounds. The server keeps the
final adapter in ``adapter/`` there.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lpfl.errors import LpflError
from lpfl.report import human_bytes
from lpfl.results import read_document
from lpfl.tokens import make_tokens
from lpfl.transport import load_server_config

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, server: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Block until the server process listens on ``port`` (or fails, or time runs out)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise LpflError(f"the server exited early with code {server.returncode}; "
                            "see server.log in the output folder")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise LpflError(f"the server did not listen on port {port} within {timeout_s:.0f} s")


def read_rounds(results: Path) -> list[dict[str, Any]]:
    """The round records the server has written so far (none while its file does not exist)."""
    if not results.is_file():
        return []
    runs = read_document(results)["runs"]
    records: list[dict[str, Any]] = runs[0]["records"] if runs else []
    return records


def round_line(record: dict[str, Any], total: int) -> str:
    accuracy = record["eval_metrics"].get("accuracy", float("nan"))
    overhead = record["wire_uplink_bytes"] / max(record["payload_uplink_bytes"], 1) - 1
    return (f"round {record['round']}/{total}: accuracy {accuracy:.3f}, "
            f"uplink {human_bytes(record['wire_uplink_bytes'])} on the wire "
            f"({overhead:+.1%} over payload), {record['seconds']:.1f} s")


def prepare_run_dir(out: Path, client_ids: list[str]) -> tuple[dict[str, str], Path]:
    """A fresh run folder: stale results, checkpoint and adapter removed, a private tokens file
    written.

    Returns the tokens and the tokens file's path."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in (out / "results.json", out / "checkpoint.safetensors"):
        stale.unlink(missing_ok=True)
    shutil.rmtree(out / "adapter", ignore_errors=True)
    tokens = make_tokens(client_ids)
    tokens_file = out / "tokens.json"
    tokens_file.write_text(json.dumps(tokens), encoding="utf-8")
    tokens_file.chmod(0o600)
    return tokens, tokens_file


def watch_rounds(server: subprocess.Popen[bytes], results: Path, total: int,
                 timeout_s: float) -> None:
    """Print a line per recorded round until the server exits; raise if it fails or hangs."""
    seen = 0
    deadline = time.monotonic() + timeout_s
    while True:
        for record in read_rounds(results)[seen:]:
            print(round_line(record, total), flush=True)
            seen += 1
        if server.poll() is not None:
            break
        if time.monotonic() > deadline:
            raise LpflError(f"the run took longer than {timeout_s:.0f} s")
        time.sleep(0.5)
    if server.returncode != 0:
        raise LpflError(f"the server exited with code {server.returncode}; see "
                        f"{results.parent / 'server.log'}")


def stop_processes(procs: list[subprocess.Popen[bytes]]) -> None:
    """Terminate whatever still runs, then kill what does not stop within 30 s."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def launch(config_path: Path, clients: int, out: Path, timeout_s: float = 3600.0) -> Path:
    """Run a whole federation as processes; returns the report's path."""
    config, server_settings = load_server_config(config_path)
    if clients > config.data.num_clients:
        raise LpflError(f"--clients {clients} exceeds data.num_clients="
                        f"{config.data.num_clients}; raise it with --set data.num_clients=N")
    ids = [f"client-{i}" for i in range(clients)]
    tokens, tokens_file = prepare_run_dir(out, ids)
    port = free_port()
    # Round 1 waits for every launched client, so sampling matches `lpfl simulate`.
    settings = [f"server.port={port}", f"server.run_dir='{out}'",
                f"server.tokens_file='{tokens_file}'", f"server.round.min_clients={clients}"]
    cli = [sys.executable, "-m", "lpfl.cli"]
    set_args = [arg for s in settings for arg in ("--set", s)]
    with (out / "server.log").open("wb") as server_log:
        server = subprocess.Popen([*cli, "server", "--config", str(config_path), *set_args],
                                  stdout=server_log, stderr=subprocess.STDOUT)
        procs: list[subprocess.Popen[bytes]] = []
        try:
            wait_for_port(port, server, timeout_s=300)
            for cid in ids:
                env = {**os.environ, "LPFL_TOKEN": tokens[cid]}
                with (out / f"{cid}.log").open("wb") as log_file:
                    procs.append(subprocess.Popen(
                        [*cli, "client", "--server", f"ws://127.0.0.1:{port}", "--client-id",
                         cid, "--config", str(config_path)], stdout=log_file,
                        stderr=subprocess.STDOUT, env=env))
            print(f"server on ws://127.0.0.1:{port}, {clients} clients; logs in {out}",
                  flush=True)
            watch_rounds(server, out / "results.json", config.federation.rounds, timeout_s)
        finally:
            stop_processes([*procs, server])
    from lpfl.harness.run_report import write_run_report

    return write_run_report(out, config, server_settings.round.update_encoding)
