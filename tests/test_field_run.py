"""A tiny two-client ``lpfl field`` run on a shaped LTE link, end to end: real client processes
in namespaces, the report and its plots, FP-FL bounded by a time budget (extrapolated), and no
namespace left behind."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from lpfl.harness.field.netns import missing_privileges
from lpfl.harness.field.run import FieldPlan, field
from lpfl.profiles.links import LINKS_FILE
from tests.test_launch import RUN

pytestmark = pytest.mark.skipif(bool(missing_privileges()),
                                reason=missing_privileges() or "root and iproute2 present")



def _field_namespaces() -> set[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in listing.stdout.splitlines() if line.startswith("lf")}


def test_a_tiny_field_run_writes_the_report(tmp_path: Path) -> None:
    run_file = tmp_path / "run.toml"
    run_file.write_text(RUN)
    out = tmp_path / "field"
    plan = FieldPlan(config=run_file, links=LINKS_FILE, profiles=["lte"], clients=2, rounds=2,
                     methods=["lp-fl", "fp-fl"], out=out, time_budget_s=0.01,
                     run_timeout_s=300, verify_seconds=1.0)
    before = _field_namespaces()
    report = field(plan)
    text = report.read_text()
    for name in ("bytes_per_round", "round_time", "accuracy_vs_uplink", "accuracy_vs_time",
                 "efficiency"):
        assert (out / f"{name}.png").stat().st_size > 0
        assert f"({name}.png)" in text
    assert "LP-FL reached it in" in text and "*extrapolated*" in text
    lp = json.loads((out / "lte" / "lp-fl" / "field.json").read_text())
    assert lp["rounds_measured"] == 2
    for row in lp["rounds"]:
        assert row["wire_uplink_bytes"] > row["payload_uplink_bytes"] > 0
        assert 0 < row["eval_seconds"] < row["seconds"]  # the server evaluated, timed apart
        for c in row["clients"]:
            assert c["upload_timed"] and c["download_timed"]
            assert c["upload_seconds"] >= 0.025  # at least the one-way delay of LTE
            assert c["compute_seconds"] > 0
    for cid, seen in lp["proxy_bytes"].items():  # the proxy saw every byte the server counted
        for direction in ("up", "down"):
            counted = sum(c[f"wire_{direction}link_bytes"] for r in lp["rounds"]
                          for c in r["clients"] if c["client_id"] == cid)
            assert seen[direction] >= counted > 0
    fp = json.loads((out / "lte" / "fp-fl" / "field.json").read_text())
    assert fp["rounds_measured"] == 0
    assert all(r["extrapolated"] and r["accuracy"] is None for r in fp["rounds"])
    assert list((out / "lte" / "lp-fl").glob("client-*.log"))  # real client processes ran
    assert _field_namespaces() == before  # the run removed its namespaces

