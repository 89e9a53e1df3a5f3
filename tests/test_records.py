"""Round records: checked when built, the same JSON as ever, one flat summary for reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from lpfl import protocol, wire
from lpfl.records import ClientOutcome, ClientRecord, ClientStatus, RoundRecord, Traffic

UPDATED = ClientOutcome(ClientStatus.UPDATED, 2, {"train_loss": 1.0, "soft_labels_added": 3.0,
                                                  "soft_label_correct": 2.0,
                                                  "soft_label_checked": 3.0,
                                                  "gold_share": 0.5}, 1.5)
DISCARDED = ClientOutcome(ClientStatus.DISCARDED, 6, {"train_loss": 3.0,
                                                      "soft_labels_added": 1.0,
                                                      "soft_label_correct": 1.0,
                                                      "soft_label_checked": 1.0,
                                                      "gold_share": 1.0}, 9.0, True,
                          reason="update norm 9 exceeds the bound 4.5")
REJECTED = ClientOutcome(ClientStatus.REJECTED, code=wire.E_INVALID_UPDATE,
                         reason="tensor 'a' is not finite")
RECORD = RoundRecord(
    round=3, attempts=2, seconds=4.0, eval_metrics={"accuracy": 0.75}, train_metrics={},
    clients=[ClientRecord("c-1", UPDATED, Traffic(100, 90, 180, 170), {"backend": "torch"}),
             ClientRecord("c-2", DISCARDED, Traffic(300, 90, 330, 120)),
             ClientRecord("c-3", REJECTED, Traffic(0, 90, 10, 100)),
             ClientRecord("c-4", ClientOutcome(ClientStatus.IDLE), Traffic(0, 0, 20, 30))],
    eval_seconds=0.5, refused="its step 9 exceeds the bound 4.5")


def test_the_json_keeps_its_flat_keys_and_status_strings() -> None:
    document = RECORD.to_dict()
    assert list(document) == ["round", "attempts", "seconds", "eval_metrics", "train_metrics",
                              "clients", "eval_seconds", "refused", "payload_uplink_bytes",
                              "payload_downlink_bytes", "wire_uplink_bytes",
                              "wire_downlink_bytes"]
    assert document["clients"][2] == {
        "client_id": "c-3", "status": "rejected", "num_examples": 0, "metrics": {},
        "update_norm": 0.0, "clipped": False, "code": "invalid_update",
        "payload_uplink_bytes": 0, "payload_downlink_bytes": 90, "wire_uplink_bytes": 10,
        "wire_downlink_bytes": 100, "capabilities": {}, "reason": "tensor 'a' is not finite"}
    assert (document["payload_uplink_bytes"], document["wire_downlink_bytes"]) == (400, 420)
    text = json.dumps(document)
    assert RoundRecord.from_dict(json.loads(text)) == RECORD
    assert json.dumps(ClientStatus.TIMED_OUT) == '"timed_out"'


def test_the_summary_combines_the_accepted_clients_by_the_one_rule() -> None:
    assert RECORD.summary() == {
        "round": 3, "accuracy": 0.75, "teacher_accuracy": None,
        "uplink_bytes": 400, "downlink_bytes": 270,
        "soft_labels_added": 4,
        "soft_label_accuracy": 0.75,  # (2 + 1) / (3 + 1), pooled
        "teacher_pool_accuracy": None, "student_pool_accuracy": None,
        "gold_share": pytest.approx(0.875),  # (2 * 0.5 + 6 * 1.0) / 8
        "train_loss": pytest.approx(2.5),  # (2 * 1.0 + 6 * 3.0) / 8
        "clients": ["c-1", "c-2"], "clipped": ["c-2"],
        "refused": "its step 9 exceeds the bound 4.5", "seconds": 4.0}
    wire_row = RECORD.summary(wire=True)
    assert (wire_row["wire_uplink_bytes"], wire_row["wire_downlink_bytes"]) == (540, 420)
    empty = RoundRecord(0, 1, 1.0, {"accuracy": 0.5}, {}, []).summary()
    assert (empty["soft_labels_added"], empty["train_loss"], empty["clients"]) == (0, None, [])


BAD: dict[str, tuple[type, dict[str, Any]]] = {
    "status as a plain string": (ClientOutcome, {"status": "updated", "num_examples": 1}),
    "an update without examples": (ClientOutcome, {"status": ClientStatus.UPDATED}),
    "examples without an update": (ClientOutcome, {"status": ClientStatus.IDLE,
                                                   "num_examples": 3}),
    "a refusal without its code": (ClientOutcome, {"status": ClientStatus.REJECTED}),
    "a code without a refusal": (ClientOutcome, {"status": ClientStatus.DROPPED,
                                                 "code": wire.E_TIMEOUT}),
    "a non-finite metric": (ClientOutcome, {"status": ClientStatus.UPDATED, "num_examples": 1,
                                            "metrics": {"train_loss": float("nan")}}),
    "a negative norm": (ClientOutcome, {"status": ClientStatus.UPDATED, "num_examples": 1,
                                        "update_norm": -1.0}),
    "negative bytes": (Traffic, {"wire_uplink_bytes": -1}),
    "an empty client id": (ClientRecord, {"client_id": "", "outcome": REJECTED}),
    "no attempt": (RoundRecord, {"round": 1, "attempts": 0, "seconds": 1.0, "eval_metrics": {},
                                 "train_metrics": {}, "clients": []}),
    "a client twice": (RoundRecord, {"round": 1, "attempts": 1, "seconds": 1.0,
                                     "eval_metrics": {}, "train_metrics": {},
                                     "clients": [RECORD.clients[0], RECORD.clients[0]]}),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_records_are_checked_when_built(kind: str) -> None:
    cls, fields = BAD[kind]
    with pytest.raises(ValueError):
        cls(**fields)


def test_a_committed_round_records_idle_clients_and_sorts_them() -> None:
    committed = protocol.RoundCommitted(
        round=1, attempt=1, global_state={"w": torch.zeros(1)},
        outcomes={"c-2": UPDATED, "c-1": REJECTED}, train_metrics={"train_loss": 1.0},
        eval_metrics={"accuracy": 0.5})
    record = committed.record({"c-3": Traffic(wire_uplink_bytes=5), "c-2": Traffic(10, 20)},
                              2.0, {"c-2": {"backend": "torch"}}, eval_seconds=0.5)
    assert [(c.client_id, c.outcome.status) for c in record.clients] == [
        ("c-1", "rejected"), ("c-2", "updated"), ("c-3", "idle")]
    assert record.clients[1].traffic == Traffic(10, 20)
    assert record.clients[1].capabilities == {"backend": "torch"}
    assert record.traffic == Traffic(10, 20, 5, 0)
    assert (record.train_metrics, record.eval_seconds) == ({"train_loss": 1.0}, 0.5)


def test_every_results_file_run_says_where_it_came_from(tmp_path: Path) -> None:
    from lpfl.provenance import git_commit
    from lpfl.results import ResultsFile

    results = ResultsFile(tmp_path / "results.json", {"seed": 1})
    results.add({"method": "lp-fl", "seed": 1})
    results.add({"method": "lp-fl", "seed": 2, "provenance": {"kept": True}})
    first, second = ResultsFile(tmp_path / "results.json", {"seed": 1}).runs
    made = first["provenance"]
    assert made["command"] and made["started"] <= made["finished"]
    assert made["git_commit"] == git_commit()  # this checkout's commit, "" outside git
    assert second["provenance"] == {"kept": True}  # a run's own provenance is kept
