"""``lpfl client --data FILE``: a device trains on its own file, whose texts never reach the
server; a bad file stops the client with the file, row and what to do."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lpfl.adapter_folder import read_adapter_info, read_adapter_state
from lpfl.cli import main
from lpfl.data.toy import NEGATIVE, POSITIVE
from lpfl.edge_client.lpfl_trainer import device_index, lpfl_trainer
from lpfl.errors import LpflError
from lpfl.harness.launch import (
    free_port,
    prepare_run_dir,
    stop_processes,
    wait_for_port,
    watch_rounds,
)
from lpfl.results import read_document
from lpfl.simulate import round_settings
from tests.conftest import tiny_config, write_run_file

RUN: dict[str, dict[str, object]] = {
    "data": {"label_names": ["negative", "positive"]},
    "federation": {"lr": 0.01},
    "soft_labels": {"threshold": 0.0, "growth": 4, "start_round": 1},
}


def device_file(path: Path, seed: int, labeled: int = 6, unlabeled: int = 10) -> Path:
    """A device's CSV: ``labeled`` rows named by class, then ``unlabeled`` rows with an empty
    label; every text ends with a marker word no corpus has (``zqx<seed>``)."""
    rng = np.random.default_rng(seed)
    lines = ["text,label"]
    for i in range(labeled + unlabeled):
        label = i % 2
        words = " ".join(rng.choice(POSITIVE if label else NEGATIVE, size=4))
        name = ("negative", "positive")[label] if i < labeled else ""
        lines.append(f"{words} zqx{seed},{name}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _args(run_file: Path, client_id: str, data: Path | None) -> argparse.Namespace:
    return argparse.Namespace(config=run_file, client_id=client_id, data=data, backend="eager",
                              artefact=None, eager_training=False, profile=None)


def test_a_client_trains_on_its_own_file(tmp_path: Path) -> None:
    run_file = write_run_file(tmp_path / "run.toml", "mr", **RUN)
    client = lpfl_trainer(_args(run_file, "phone-7", device_file(tmp_path / "p.csv", 1)))
    assert (len(client.labeled), len(client.unlabeled)) == (6, 10)
    assert [e.label for e in client.labeled] == [0, 1, 0, 1, 0, 1]
    assert client.index == device_index("phone-7")
    schedule: dict[str, object] = {"threshold": 0.0, "start_round": 1, "growth": 4,
                                   "balanced": False}
    settings = round_settings(tiny_config(soft_labels=schedule),
                              "lp-fl", 0)(1).to_wire()
    state = client.runtime.trainer.state()
    update = client.train_round(1, state, settings)
    assert update.num_examples == 6 + 4  # labeled rows plus the round's soft labels
    assert update.metrics["soft_labels_added"] == 4
    assert "pool_checked" not in update.metrics  # no hidden labels on a device


def test_without_data_the_client_takes_its_share_of_the_corpus(tmp_path: Path) -> None:
    run_file = write_run_file(tmp_path / "run.toml", "mr", **RUN)
    client = lpfl_trainer(_args(run_file, "client-1", None))
    assert (len(client.labeled), len(client.unlabeled), client.index) == (8, 16, 1)
    with pytest.raises(LpflError, match="or train on this device's own file with --data FILE"):
        lpfl_trainer(_args(run_file, "phone-7", None))


@pytest.mark.parametrize(("content", "message"), [
    ("text,label\ngood,positive\nbad,nope\n",
     ", line 3: label 'nope' is not a class index nor one of data.label_names"),
    ("text,label\ngood,\nbad,\n", ": no labeled rows (2 rows, every label empty)"),
    ("words,label\ngood,1\n", ", line 1: missing column 'text'"),
])
def test_a_bad_device_file_ends_the_client_with_file_row_and_fix(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str) -> None:
    run_file = write_run_file(tmp_path / "run.toml", "mr", **RUN)
    data = tmp_path / "mine.csv"
    data.write_text(content)
    code = main(["client", "--server", "ws://127.0.0.1:9", "--client-id", "phone",
                 "--token", "t" * 32, "--config", str(run_file), "--data", str(data)])
    assert code == 2
    assert f"error: {data}{message}" in capsys.readouterr().err


def test_devices_federate_their_own_files_and_the_server_never_sees_a_text(
        tmp_path: Path) -> None:
    """Real `lpfl server` and two `lpfl client --data` processes for two rounds; the server
    keeps the final adapter, and no device text (marker words) is in anything it wrote."""
    run_file = write_run_file(tmp_path / "run.toml", "mr", **RUN)
    out = tmp_path / "run"
    ids = ["phone-a", "tablet-b"]
    tokens, tokens_file = prepare_run_dir(out, ids)
    files = {cid: device_file(tmp_path / f"{cid}.csv", seed) for seed, cid in enumerate(ids)}
    port = free_port()
    cli = [sys.executable, "-m", "lpfl.cli"]
    sets = [f"server.port={port}", f"server.run_dir='{out}'", f"server.tokens_file='{tokens_file}'",
            "server.round.min_clients=2"]
    with (out / "server.log").open("wb") as log:
        server = subprocess.Popen([*cli, "server", "--config", str(run_file),
                                   *[arg for s in sets for arg in ("--set", s)]],
                                  stdout=log, stderr=subprocess.STDOUT)
    procs = [server]
    try:
        wait_for_port(port, server, timeout_s=120)
        for cid in ids:
            with (out / f"{cid}.log").open("wb") as log:
                procs.append(subprocess.Popen(
                    [*cli, "client", "--server", f"ws://127.0.0.1:{port}", "--client-id", cid,
                     "--config", str(run_file), "--data", str(files[cid])],
                    stdout=log, stderr=subprocess.STDOUT,
                    env={**os.environ, "LPFL_TOKEN": tokens[cid]}))
        watch_rounds(server, out / "results.json", 2, timeout_s=300)
    finally:
        stop_processes(procs)
    for cid in ids:
        assert "6 labeled and 10 unlabeled rows" in (out / f"{cid}.log").read_text()
    rounds = read_document(out / "results.json")["runs"][0]["records"]
    assert [r["round"] for r in rounds] == [1, 2]
    for record in rounds:
        assert sorted(c["client_id"] for c in record["clients"]) == ids
        assert all(c["status"] == "updated" for c in record["clients"])
    assert read_adapter_info(out / "adapter").class_names == ("negative", "positive")
    assert read_adapter_state(out / "adapter")
    assert "final adapter in" in (out / "server.log").read_text()
    server_files = [p for p in out.rglob("*") if p.is_file() and p.name not in
                    {f"{cid}.log" for cid in ids}]
    assert server_files
    for path in server_files:
        assert b"zqx" not in path.read_bytes(), path
