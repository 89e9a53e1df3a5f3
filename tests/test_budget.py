"""The client's memory budget: measured at startup, refused with a message, never an OOM."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from lpfl.client_round import LocalClient
from lpfl.edge_client import budget
from lpfl.edge_client.budget import (
    OverBudget,
    check_budget,
    enforce_profile,
    measure,
    round_probe,
)
from lpfl.simulate import federated_data, fresh_prompt_model, method_mode
from lpfl.trainer_api import peak_rss_bytes
from tests.conftest import tiny_config
from tests.test_launch import RUN

MIB = 2**20


def profile_file(path: Path, budget_mb: int, threads: int = 1) -> Path:
    path.write_text(f'name = "small-device"\nkind = "phone"\ncpu_arch = "aarch64"\n'
                    f'memory_budget_mb = {budget_mb}\nthreads = {threads}\nlink = "lte"\n'
                    'source = "a test"\n')
    return path


def tiny_client() -> LocalClient:
    config = tiny_config()
    data = federated_data(config, 0)
    pm = fresh_prompt_model(config, method_mode("lp-fl"), 0)
    return LocalClient("client-0", 0, pm, data.labeled[0], data.unlabeled[0], 8)


def test_within_the_budget_reports_the_headroom() -> None:
    footprint = check_budget(300 * MIB, 512 * MIB, "phone", {"model.max_length": 64})
    assert footprint.headroom_bytes == 212 * MIB


def test_over_the_budget_names_the_settings_to_change() -> None:
    with pytest.raises(OverBudget) as caught:
        check_budget(700 * MIB, 512 * MIB, "phone-midrange",
                     {"model.max_length": 64, "federation.batch_size": 8, "backend": "eager"})
    message = str(caught.value)
    assert "700 MiB, over the 512 MiB memory_budget_mb of device profile phone-midrange" in message
    for setting in ("model.max_length=64", "federation.batch_size=8", "backend=eager",
                    "Lower model.max_length or federation.batch_size", "int8 program"):
        assert setting in message


def test_the_probe_measures_a_batch_and_changes_nothing() -> None:
    client = tiny_client()
    before = client.runtime.trainer.state()
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    peak = measure(round_probe(client, batch_size=4, max_length=48))
    assert peak >= peak_rss_bytes() > 0
    torch.testing.assert_close(torch.rand(3), expected)
    after = client.runtime.trainer.state()
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), name


def test_a_generous_profile_passes_and_probes_with_the_profiles_threads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The profile's thread count (2; 1 before) is in force when the probe runs and stays in
    force for the rounds after it."""
    config = tiny_config()
    client = tiny_client()
    seen: list[int] = []
    real_measure = budget.measure

    def measure_and_note_threads(probe: Callable[[], object]) -> int:
        seen.append(torch.get_num_threads())
        return real_measure(probe)

    monkeypatch.setattr(budget, "measure", measure_and_note_threads)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        footprint = enforce_profile(client, config,
                                    profile_file(tmp_path / "p.toml", 1_000_000, threads=2))
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    assert seen == [2]
    assert after == 2
    assert footprint.budget_bytes == 1_000_000 * MIB
    assert 0 < footprint.peak_bytes < footprint.budget_bytes


def test_lpfl_client_over_budget_refuses_before_connecting(tmp_path: Path) -> None:
    """A real `lpfl client` process: a clear error and exit 2, no traceback, no server needed."""
    run = tmp_path / "run.toml"
    run.write_text(RUN)
    proc = subprocess.run(
        [sys.executable, "-m", "lpfl.cli", "client", "--server", "ws://127.0.0.1:9",
         "--client-id", "client-0", "--token", "t", "--config", str(run),
         "--profile", str(profile_file(tmp_path / "p.toml", 64))],
        capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "memory_budget_mb of device profile small-device" in proc.stderr
    assert "model.max_length=48, federation.batch_size=4" in proc.stderr
