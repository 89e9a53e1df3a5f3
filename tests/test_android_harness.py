"""`lpfl device push|run|pull` against a fake adb (tests/fake_adb/adb) on PATH.

These tests check the harness (the adb calls, the start script, what lands in the run folder),
not a device: no emulator can run on this machine. The fake records every call, keeps the
"device" files on this machine's disk and really runs the start script with /bin/sh, with a stub
in place of the device's Python.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from lpfl.android_harness.adb import Adb, AdbError
from lpfl.cli import main

FAKE_ADB = Path(__file__).parent / "fake_adb"
SERIAL = "emulator-5554"
TOKEN = "s3cret-token"
STUB = """#!/bin/sh
echo "python $*"
[ -n "$LPFL_TOKEN" ] || { echo "no LPFL_TOKEN"; exit 3; }
echo "client client-0: trained 2 rounds; the run is finished"
exit "${STUB_EXIT:-0}"
"""


@pytest.fixture
def device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake adb on PATH and a device profile whose folder and Python are under tmp_path."""
    monkeypatch.setenv("PATH", f"{FAKE_ADB}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ADB_STATE", str(tmp_path / "adb-state"))
    monkeypatch.setenv("FAKE_ADB_SERIAL", SERIAL)
    monkeypatch.delenv("LPFL_ADB", raising=False)
    python = tmp_path / "termux" / "usr" / "bin" / "python3"
    python.parent.mkdir(parents=True)
    python.write_text(STUB)
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    (tmp_path / "profile.toml").write_text(f"""
name = "test-emulator"
kind = "emulator"
cpu_arch = "aarch64"
memory_budget_mb = 1024
threads = 2
link = "wifi"
route = "termux"
python = "{python}"
device_dir = "{tmp_path / 'device' / 'lpfl'}"
source = "a test"
""")
    (tmp_path / "run.toml").write_text("[model]\nsource = 'tiny-llama'\n")
    return tmp_path


def calls(tmp_path: Path) -> list[list[str]]:
    lines = (tmp_path / "adb-state" / "calls.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def device_args(tmp_path: Path, action: str, *extra: str) -> list[str]:
    return ["device", action, "--serial", SERIAL, "--profile", str(tmp_path / "profile.toml"),
            *extra]


def test_push_copies_run_profile_and_artefacts(device: Path) -> None:
    artefacts = device / "artefacts"
    artefacts.mkdir()
    (artefacts / "manifest.json").write_text('{"runtime": "executorch"}')
    assert main(device_args(device, "push", "--config", str(device / "run.toml"),
                            "--artefacts", str(artefacts))) == 0
    remote = device / "device" / "lpfl"
    assert (remote / "run.toml").read_text() == (device / "run.toml").read_text()
    assert "test-emulator" in (remote / "profile.toml").read_text()
    assert (remote / "artefacts" / "manifest.json").exists()
    made = calls(device)
    assert all(call[:2] == ["-s", SERIAL] for call in made)
    assert ["-s", SERIAL, "get-state"] in made
    assert ["-s", SERIAL, "shell", "getprop ro.product.cpu.abi"] in made


def test_push_refuses_a_device_of_another_abi(device: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FAKE_ADB_ABI", "x86_64")
    assert main(device_args(device, "push", "--config", str(device / "run.toml"))) == 2
    assert "ABI 'x86_64'" in capsys.readouterr().err
    assert not (device / "device" / "lpfl" / "run.toml").exists()


def test_run_reverses_the_port_runs_the_client_and_removes_the_reverse(device: Path) -> None:
    assert main(device_args(device, "run", "--server", "ws://127.0.0.1:8765",
                            "--client-id", "client-0", "--token", TOKEN)) == 0
    remote = device / "device" / "lpfl"
    log = (remote / "client.log").read_text()
    assert "--server ws://127.0.0.1:8765 --client-id client-0" in log
    assert "--profile profile.toml" in log and "trained 2 rounds" in log
    assert json.loads((remote / "status.json").read_text())["exit_code"] == 0
    assert stat.S_IMODE((remote / "client.sh").stat().st_mode) == 0o600
    made = calls(device)
    reverse = made.index(["-s", SERIAL, "reverse", "tcp:8765", "tcp:8765"])
    started = next(i for i, c in enumerate(made) if c[2:3] == ["shell"] and "sh " in c[3])
    removed = made.index(["-s", SERIAL, "reverse", "--remove", "tcp:8765"])
    assert reverse < started < removed
    assert all(TOKEN not in arg for call in made for arg in call), "token leaked into argv"


def test_a_failing_client_is_an_error_and_the_reverse_is_still_removed(
        device: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("STUB_EXIT", "4")
    assert main(device_args(device, "run", "--server", "ws://127.0.0.1:8765",
                            "--client-id", "client-0", "--token", TOKEN)) == 2
    assert "lpfl device pull" in capsys.readouterr().err
    assert calls(device)[-1] == ["-s", SERIAL, "reverse", "--remove", "tcp:8765"]
    status = json.loads((device / "device" / "lpfl" / "status.json").read_text())
    assert status["exit_code"] == 4


def test_pull_brings_log_status_and_device_identity_into_the_run_folder(device: Path) -> None:
    main(device_args(device, "run", "--server", "ws://127.0.0.1:8765", "--client-id",
                     "client-0", "--token", TOKEN))
    out = device / "run"
    assert main(device_args(device, "pull", "--out", str(out))) == 0
    folder = out / "devices" / SERIAL
    assert "trained 2 rounds" in (folder / "client.log").read_text()
    info = json.loads((folder / "device.json").read_text())
    assert info["abi"] == "arm64-v8a" and info["profile"] == "test-emulator"
    assert info["rounds_trained"] == 2 and info["status"]["exit_code"] == 0
    assert info["memory_bytes"] == 2030000 * 1024


def test_pull_before_any_run_names_the_missing_file(device: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(device_args(device, "pull", "--out", str(device / "run"))) == 2
    assert "client.log" in capsys.readouterr().err


def test_an_unknown_serial_is_refused(device: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = device_args(device, "push", "--config", str(device / "run.toml"))
    argv[argv.index(SERIAL)] = "emulator-5556"
    assert main(argv) == 2
    assert "device 'emulator-5556' not found" in capsys.readouterr().err


def test_a_jetson_is_not_an_adb_device(device: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["device", "pull", "--serial", SERIAL, "--profile", "jetson-orin-nano",
                 "--out", str(device)]) == 2
    assert "route='native'" in capsys.readouterr().err


def test_no_adb_on_path_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("LPFL_ADB", raising=False)
    with pytest.raises(AdbError, match="apt-get install adb"):
        Adb(SERIAL)
