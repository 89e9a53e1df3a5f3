"""A tiny two-client fleet through ``lpfl field``, end to end: each client on its own link and
device, the calibration and every client's CPU quota in ``field.json``, and no cgroup or
namespace left behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lpfl.config import load_config
from lpfl.fleet import Fleet, FleetGroup
from lpfl.harness.field.calibrate import measure_host
from lpfl.harness.field.cpu_quota import detect, missing_cgroups
from lpfl.harness.field.netns import missing_privileges
from lpfl.harness.field.run import FieldPlan, field
from lpfl.profiles.links import LINKS_FILE
from tests.test_launch import RUN

REASON = missing_privileges() or missing_cgroups(detect())
pytestmark = pytest.mark.skipif(bool(REASON), reason=REASON or "root, iproute2 and cgroups")


def _field_groups() -> set[Path]:
    layout = detect()
    return {p for base in (layout.bases() if layout else []) for p in base.glob("lf*-c*")}


def slower_board(folder: Path, run_file: Path, factor: int, name: str) -> Path:
    """A device profile ``factor`` times slower than this host: its reference is this host's
    own measured throughput on the run's model, divided (a fixture, not a claim about any
    device)."""
    host = measure_host(load_config(run_file))
    board = folder / f"{name}.toml"
    board.write_text(f'name = "{name}"\nkind = "jetson"\ncpu_arch = "x86_64"\n'
                     'memory_budget_mb = 2048\nthreads = 1\nlink = "lte"\nroute = "native"\n'
                     'source = "test fixture"\n[speed]\n'
                     f"model_params_m = {host.model_params / 1e6}\n"
                     f"train_tokens_per_s = {host.train_tokens_per_s / factor}\n"
                     f'source = "test fixture: 1/{factor} of this host"\n')
    return board


def test_a_fleet_runs_each_client_on_its_own_link_and_quota(tmp_path: Path) -> None:
    run_file = tmp_path / "run.toml"
    run_file.write_text(RUN)
    board = slower_board(tmp_path, run_file, 2, "half-host")
    fleet = Fleet(groups=(FleetGroup(1, str(board), {"3g": 1.0}),
                          FleetGroup(1, "jetson-orin-nano", {"wifi": 1.0})), name="mixed")
    out = tmp_path / "field"
    plan = FieldPlan(config=run_file, links=LINKS_FILE, profiles=[], clients=0, rounds=1,
                     methods=["lp-fl"], out=out, run_timeout_s=300, verify_seconds=1.0,
                     fleet=fleet)
    before = _field_groups()
    field(plan)
    document = json.loads((out / "mixed" / "lp-fl" / "field.json").read_text())
    assert document["calibration"]["train_step_s"] > 0
    assert document["calibration"]["soft_label_s"] > 0
    [row] = document["rounds"]
    emulations = {c["client_id"]: c["emulation"] for c in row["clients"]}
    assert emulations["client-0"]["device"] == str(board)
    assert emulations["client-0"]["link"] == "3g"
    assert 0.2 <= emulations["client-0"]["cpu_quota"] <= 1.0  # about 0.5, measured twice
    assert emulations["client-0"]["memory_limit_mb"] == 2048
    assert emulations["client-1"] == {"device": "jetson-orin-nano", "link": "wifi",
                                      "cpu_quota": None, "memory_limit_mb": 4096}
    uploads = {c["client_id"]: c["upload_seconds"] for c in row["clients"]}
    assert uploads["client-0"] > uploads["client-1"]  # 3G's 0.4 Mbit/s against Wi-Fi's 20
    assert all(c["status"] == "updated" for c in row["clients"])
    assert {c["profile"] for c in document["shaping_check"]} == {"3g", "wifi"}
    assert _field_groups() == before  # the run removed its cgroups
