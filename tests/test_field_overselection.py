"""Over-selection and background evaluation in field runs: a three-client fleet with
``close-after = 2`` whose slowest client (a tiny CPU quota on 3G) is late in every round, the
accounting of late uploads from the proxy's timing, and the target taken from a reference run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lpfl.errors import LpflError
from lpfl.fleet import Fleet, FleetGroup
from lpfl.harness.field.cpu_quota import detect, missing_cgroups
from lpfl.harness.field.delay_proxy import Chunk
from lpfl.harness.field.netns import missing_privileges
from lpfl.harness.field.overselection import LateUpload, late_uploads, uploads
from lpfl.harness.field.report import write_field_report
from lpfl.harness.field.run import FieldPlan, field, field_rows
from lpfl.harness.field.target import target_from_results
from lpfl.profiles.links import LINKS_FILE
from lpfl.records import ClientOutcome, ClientRecord, ClientStatus, RoundRecord, Traffic
from tests.test_field_fleet import slower_board
from tests.test_launch import RUN

REASON = missing_privileges() or missing_cgroups(detect())
U, L = ClientStatus.UPDATED, ClientStatus.LATE


def test_a_late_clients_refused_upload_is_found_after_its_earlier_uploads() -> None:
    # Round 1 accepted (upload at 10 s), rounds 2 and 3 late: round 2's refused upload comes at
    # 30 s; round 3's never came. Pings (6 bytes) are not uploads.
    up = [Chunk(9.8, 9.8, 600), Chunk(10.0, 10.0, 500), Chunk(20.0, 20.0, 6),
          Chunk(29.9, 29.9, 700), Chunk(30.2, 30.2, 400)]
    downloads = {2: Chunk(12.0, 12.5, 900), 3: Chunk(24.0, 24.4, 900)}
    found = late_uploads([(1, U), (2, L), (3, L)], up, downloads, payload=1000, delay_s=0.1)
    # It downloaded round 2's task by 12.5 s, finished round 1's upload at 10 s, so it worked
    # from 12.5 s to 30.2 s: 0.5 + 0.1 download, 17.7 s, 0.1 to reach the server.
    assert found[2].wasted_uplink_bytes == 1100
    assert found[2].needed_seconds == pytest.approx(0.6 + 17.7 + 0.1)
    assert found[3] == LateUpload(None, None)


def _record(number: int, seconds: float, eval_seconds: float,
            statuses: dict[str, ClientStatus]) -> dict[str, object]:
    clients = [ClientRecord(cid, ClientOutcome(s, num_examples=4, metrics={
        "compute_seconds": 1.0}) if s.accepted else ClientOutcome(s),
        Traffic(payload_uplink_bytes=1000 if s.accepted else 0, payload_downlink_bytes=900,
                wire_uplink_bytes=1100 if s.accepted else 0, wire_downlink_bytes=950))
        for cid, s in statuses.items()]
    return RoundRecord(number, 1, seconds, {"accuracy": 0.5}, {}, clients,
                       eval_seconds).to_dict()


def test_a_background_evaluation_is_not_taken_out_of_the_round_and_late_rounds_are_counted(
) -> None:
    rounds = [_record(1, 4.0, 3.0, {"a": U, "b": U, "slow": L})]
    chunks = {"slow": {"up": [Chunk(40.0, 40.0, 1100)], "down": [Chunk(1.0, 1.5, 950)]}}
    delays = {"a": 0.0, "b": 0.0, "slow": 0.5}
    [background] = field_rows(rounds, chunks, delays, inline_evaluation=False)
    [inline] = field_rows(rounds, chunks, delays, inline_evaluation=True)
    assert background["training_seconds"] == 4.0  # evaluated beside the next round
    assert inline["training_seconds"] == 1.0  # evaluated inside the round
    assert background["clients"][0]["wait_seconds"] == pytest.approx(3.0)  # 4 s − 1 s compute
    assert inline["clients"][0]["wait_seconds"] == 0.0
    slow = background["clients"][2]
    assert slow["wasted_uplink_bytes"] == 1100
    assert slow["needed_seconds"] == pytest.approx(0.5 + 0.5 + 38.5 + 0.5)
    assert background["late_clients"] == 1 and background["wasted_uplink_bytes"] == 1100
    assert background["time_saved_seconds"] == pytest.approx(40.0 - 4.0)


def _reference(path: Path, dataset: str = "mr") -> Path:
    runs = [{"method": "fp-fl", "seed": s, "final_accuracy": acc, "rounds": []}
            for s, acc in ((0, 0.80), (1, 0.84))]
    runs.append({"method": "centralized", "seed": 0, "final_accuracy": 0.9, "rounds": []})
    path.write_text(json.dumps({"config": {"data": {"dataset": dataset, "test_size": 100}},
                                "runs": runs}))
    return path


def test_the_target_comes_from_a_reference_run_on_the_same_split(tmp_path: Path) -> None:
    reference = _reference(tmp_path / "results.json")
    target = target_from_results(reference, "fp-fl", {"dataset": "mr", "test_size": 100})
    assert target.accuracy == pytest.approx(0.82)
    assert "fp-fl" in target.source and "2 seeds" in target.source
    with pytest.raises(LpflError, match="choose one with --target-method"):
        target_from_results(reference, None)
    with pytest.raises(LpflError, match="another test split"):
        target_from_results(reference, "fp-fl", {"dataset": "mr", "test_size": 1000})


@pytest.mark.skipif(bool(REASON), reason=REASON or "root, iproute2 and cgroups")
def test_a_fleet_closes_rounds_without_its_slow_client(tmp_path: Path) -> None:
    run_file = tmp_path / "run.toml"
    run_file.write_text(RUN)
    board = slower_board(tmp_path, run_file, 8, "slow-board")
    fleet = Fleet(groups=(FleetGroup(1, str(board), {"3g": 1.0}),
                          FleetGroup(2, "jetson-orin-nano", {"wifi": 1.0})), name="overselect")
    out = tmp_path / "field"
    plan = FieldPlan(config=run_file, links=LINKS_FILE, profiles=[], clients=0, rounds=8,
                     methods=["lp-fl"], out=out, run_timeout_s=300, verify_seconds=0.5,
                     fleet=fleet, overrides=["data.num_clients=3",
                                             "federation.clients_per_round=3",
                                             "server.round.close-after=2"])
    report = field(plan)
    document = json.loads((out / "overselect" / "lp-fl" / "field.json").read_text())
    assert document["evaluation"] == "background"  # a fleet's default
    assert document["close_after"] == 2
    quota = document["fleet"]["clients"]["client-0"]["cpu_quota"]
    seen = []
    for row in document["rounds"]:
        status = {c["client_id"]: c["status"] for c in row["clients"]}
        assert status == {"client-0": "late", "client-1": "updated", "client-2": "updated"}
        assert row["late_clients"] == 1
        assert row["eval_seconds"] > 0  # filled in by the background worker
        assert row["training_seconds"] == row["seconds"]  # which the round never waited for
        slow, fast = row["clients"][0], row["clients"][1]
        # At its quota the slow client computes at least 1/quota times as long as a fast one.
        assert row["seconds"] < fast["compute_seconds"] / quota
        if slow["needed_seconds"] is not None:  # its refused upload came before the run ended
            seen.append(row["round"])
            assert row["seconds"] < slow["needed_seconds"]
            assert row["time_saved_seconds"] > 0
            assert slow["wasted_uplink_bytes"] >= fast["payload_uplink_bytes"]
    assert seen and seen == list(range(1, len(seen) + 1))  # its first rounds' refused uploads
    text = report.read_text()
    assert "## Fleet" in text and "| link | clients |" in text and "| device | clients |" in text
    assert "Over-selection:" in text and "Server evaluation background" in text
    for name in ("round_time_cdf", "accuracy_vs_bytes"):
        assert (out / f"{name}.png").stat().st_size > 0 and f"({name}.png)" in text
    reference = _reference(tmp_path / "reference.json")
    again = write_field_report(out, target_from_results(reference, "centralized")).read_text()
    assert "Target accuracy 90.0%: the final accuracy of centralized in" in again


def test_uploads_queued_back_to_back_on_a_slow_link_are_told_apart() -> None:
    # Two 1,050-byte uploads with no pause between them (the first one's last byte came in
    # the chunk at 1.2 s), then a ping and a third upload.
    stream = [Chunk(1.0, 1.0, 700), Chunk(1.2, 1.2, 700), Chunk(1.4, 1.4, 700),
              Chunk(3.0, 3.0, 6), Chunk(5.0, 5.0, 1050)]
    assert uploads(stream, payload=1000) == [Chunk(1.0, 1.2, 1050), Chunk(1.2, 1.4, 1050),
                                             Chunk(5.0, 5.0, 1050)]
