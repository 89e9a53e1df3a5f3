"""The server's files and settings: checkpoints, results, tokens, the [server] config table and
the command line."""

from __future__ import annotations

import argparse
import hmac
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from lpfl.errors import ConfigError, LpflError
from lpfl.protocol import ClipMode, RoundRules
from lpfl.records import ClientOutcome, ClientRecord, ClientStatus, RoundRecord, Traffic
from lpfl.results import SCHEMA, JsonResultsWriter, read_document, read_records, write_atomically
from lpfl.server import cli as server_cli
from lpfl.server.auth import TokenAuthenticator
from lpfl.server.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from lpfl.strategy import Aggregation
from lpfl.tokens import load_tokens, make_tokens
from lpfl.transport import ServerSettings, load_server_config, server_settings_from_dict

RECORD = RoundRecord(
    round=2, attempts=1, seconds=0.5, eval_metrics={"accuracy": 0.75},
    train_metrics={"train_loss": 0.5},
    clients=[ClientRecord("c-1", ClientOutcome(ClientStatus.UPDATED, 12, {"train_loss": 0.5}, 1.5),
                          Traffic(100, 90, 180, 170)),
             ClientRecord("c-2", ClientOutcome(ClientStatus.IDLE),
                          Traffic(wire_uplink_bytes=20, wire_downlink_bytes=30))],
)


def test_round_record_round_trips_and_totals_bytes() -> None:
    document = RECORD.to_dict()
    assert document["wire_uplink_bytes"] == 200
    assert document["payload_downlink_bytes"] == 90
    assert RoundRecord.from_dict(json.loads(json.dumps(document))) == RECORD


def test_checkpoint_round_trips_atomically(tmp_path: Path) -> None:
    path = tmp_path / "run" / "checkpoint.safetensors"
    state = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(1)}
    rng = torch.get_rng_state().numpy().tobytes()
    save_checkpoint(path, Checkpoint(2, state, [RECORD], rng))
    save_checkpoint(path, Checkpoint(2, state, [RECORD], rng))  # replacing is fine
    loaded = load_checkpoint(path)
    assert loaded.round == 2 and loaded.rounds == [RECORD] and loaded.rng_state == rng
    assert set(loaded.global_state) == {"a", "b"}
    torch.testing.assert_close(loaded.global_state["a"], state["a"])
    assert os.listdir(path.parent) == ["checkpoint.safetensors"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "results.json"
    write_atomically(path, b"old")

    def crash(*args: Any) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        write_atomically(path, b"new")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["results.json"]


@pytest.mark.parametrize("content", [b"", b"not safetensors", b"\x08" + bytes(7) + b"{}"])
def test_unreadable_checkpoints_are_config_errors(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "checkpoint.safetensors"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="cannot be resumed"):
        load_checkpoint(path)


def test_results_writer_rewrites_the_whole_history(tmp_path: Path) -> None:
    writer = JsonResultsWriter(tmp_path / "results.json", {"config": {"rounds": 2}})
    writer.write([RECORD])
    writer.write([RECORD, RECORD])
    document = json.loads((tmp_path / "results.json").read_text())
    assert document["schema"] == SCHEMA and document["config"] == {"rounds": 2}
    (run,) = document["runs"]
    assert len(run["records"]) == len(run["rounds"]) == 2
    assert [RoundRecord.from_dict(r) for r in run["records"]] == [RECORD, RECORD]
    assert run["rounds"][0] == RECORD.summary(wire=True)
    made = run["provenance"]
    assert made["started"] <= made["finished"] and made["lpfl"] and made["machine"]["cpu_count"]
    assert set(made["libraries"]) >= {"torch", "transformers", "peft"}


def test_an_older_aggregator_file_reads_in_the_current_layout(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    config = {"run": {"methods": ["lp-fl"], "seeds": [3]}}
    path.write_text(json.dumps({"meta": {"config": config, "server": {"port": 1}},
                                "rounds": [RECORD.to_dict()]}))
    document = read_document(path)
    assert document["config"] == config and document["server"] == {"port": 1}
    (run,) = document["runs"]
    assert (run["method"], run["seed"]) == ("lp-fl", 3)
    assert run["rounds"] == [RECORD.summary(wire=True)]
    assert read_records(path) == [RECORD]
    path.write_text("[1, 2]")
    with pytest.raises(LpflError, match="not an lpfl results file"):
        read_document(path)


def test_tokens_are_checked_and_files_are_validated(tmp_path: Path) -> None:
    tokens = make_tokens(["c-1", "c-2"])
    assert len(set(tokens.values())) == 2
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps(tokens))
    auth = TokenAuthenticator(load_tokens(path))
    assert auth.verify("c-1", tokens["c-1"])
    assert not auth.verify("c-1", tokens["c-2"])
    assert not auth.verify("ghost", tokens["c-1"])
    assert not auth.verify("c-1", "")
    with pytest.raises(ConfigError, match="no client tokens"):
        TokenAuthenticator({})
    bad_files: list[object] = [{"c-1": "short"}, {"bad id": "x" * 20}, [], {}]
    for bad in bad_files:
        path.write_text(json.dumps(bad))
        with pytest.raises(ConfigError, match="tokens file"):
            load_tokens(path)
    with pytest.raises(ConfigError, match="tokens file"):
        load_tokens(tmp_path / "missing.json")


def test_every_token_check_is_one_constant_time_comparison(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No timing is measured: each check, for a known id or an unknown one, right or wrong,
    makes exactly one :func:`hmac.compare_digest` call with the offered token, and its answer
    decides (a check that compared with ``==`` first, or skipped unknown ids, would show here)."""
    tokens = make_tokens(["c-1", "c-2"])
    auth = TokenAuthenticator(tokens)
    calls: list[tuple[bytes, bytes]] = []

    def comparison_that_says(answer: bool) -> Callable[[bytes, bytes], bool]:
        def compare_digest(a: bytes, b: bytes) -> bool:
            calls.append((a, b))
            return answer
        return compare_digest

    offers = [("c-1", tokens["c-1"]), ("c-1", tokens["c-2"]), ("ghost", tokens["c-1"]),
              ("c-1", ""), ("ghost", "")]
    for answer in (False, True):
        monkeypatch.setattr(hmac, "compare_digest", comparison_that_says(answer))
        for client_id, token in offers:
            calls.clear()
            verified = auth.verify(client_id, token)
            assert len(calls) == 1, (client_id, token)
            assert calls[0][0] == token.encode()
            # A known id is compared with its own token; an unknown one with a decoy that is
            # no client's token, and is refused whatever the comparison says.
            known = client_id in tokens
            assert (calls[0][1] == tokens[client_id].encode()) if known else (
                calls[0][1].decode() not in tokens.values())
            assert verified is (answer and known), (client_id, answer)


RUN_TOML = """
[federation]
rounds = 3
clients_per_round = 2
[server]
port = 9000
tokens-file = "t.json"
max-concurrent-uploads = 2
[server.round]
min-updates = 2
deadline-s = 30
update-encoding = "int8"
"""


def test_server_table_loads_beside_the_run_config(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text(RUN_TOML)
    config, settings = load_server_config(path, ["server.round.clip=absolute",
                                                 "server.round.clip-norm=2.5",
                                                 "server.round.aggregation=trimmed-mean",
                                                 "federation.rounds=4", "server.host=0.0.0.0"])
    assert config.federation.rounds == 4
    assert settings == ServerSettings(
        host="0.0.0.0", port=9000, tokens_file="t.json", max_concurrent_uploads=2,
        round=RoundRules(min_updates=2, deadline_s=30.0, update_encoding="int8",
                         clip=ClipMode.ABSOLUTE, clip_norm=2.5,
                         aggregation=Aggregation.TRIMMED_MEAN))


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"prot": 1}, "unknown key server.prot"),
        ({"port": "80"}, "server.port must be an integer"),
        ({"port": True}, "server.port must be an integer"),
        ({"port": 70000}, "server.port"),
        ({"round": 3}, "server.round must be a table"),
        ({"round": {"deadline-s": -1}}, "deadline_s"),
        ({"round": {"quorum": 1}}, "unknown key server.round.quorum"),
        ({"round": {"clip-norm": 1.0}}, 'clip = "absolute"'),
        ({"round": {"clip": "absolute"}}, 'clip = "absolute"'),
        ({"round": {"clip": "sometimes"}}, "adaptive, absolute, off"),
        ({"round": {"aggregation": "mode"}}, "fedavg, median, trimmed-mean, norm-filter"),
        ({"round": {"trim-fraction": 0.5}}, "trim_fraction"),
        ({"round": {"norm-multiplier": 0.5}}, "norm_multiplier"),
        ({"upload-frame-timeout-s": 0}, "upload_frame_timeout_s"),
        ({"certfile": "c.pem"}, "keyfile"),
    ],
)
def test_bad_server_settings_say_what_to_change(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        server_settings_from_dict(table)


def test_missing_run_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_server_config(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_server_config(tmp_path / "bad.toml")


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    server_cli.add_parser(parser.add_subparsers())
    return parser.parse_args(["server", *argv])


def test_cli_overrides_host_and_port_and_needs_a_factory(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text(RUN_TOML)
    config, settings = server_cli.server_settings(parse("--config", str(path), "--port", "0"))
    assert (settings.host, settings.port, config.federation.rounds) == ("127.0.0.1", 0, 3)
    with pytest.raises(LpflError, match="no model is wired"):
        server_cli.run(parse("--config", str(path)))
    with pytest.raises(LpflError, match="--config"):
        server_cli.server_settings(parse())
