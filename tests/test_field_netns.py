"""Namespaces and veth pairs for field clients: made, reachable, and always removed (after a
failed run and a failed setup too); ``lpfl field`` without root creates nothing."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lpfl.errors import LpflError
from lpfl.harness.field import cli, netns
from lpfl.harness.field.netns import Namespaces, list_owned, missing_privileges

needs_root = pytest.mark.skipif(bool(missing_privileges()),
                                reason=missing_privileges() or "root and iproute2 present")


@needs_root
def test_namespaces_are_reachable_and_removed_after_a_failed_run() -> None:
    ns = Namespaces(2)
    with pytest.raises(RuntimeError, match="the run failed"), ns as links:
        assert len(list_owned(ns.prefix)[0]) == 2
        for link in links:  # each client reaches its veth's root end, and only from inside
            with socket.create_server((link.host_ip, 0)) as listener:
                probe = (f"import socket; socket.create_connection(('{link.host_ip}', "
                         f"{listener.getsockname()[1]}), timeout=20)")
                done = subprocess.run([*link.exec_prefix(), sys.executable, "-c", probe],
                                      capture_output=True, text=True, check=False)
            assert done.returncode == 0, done.stderr
        raise RuntimeError("the run failed")
    assert list_owned(ns.prefix) == ([], [])


@needs_root
def test_a_setup_that_fails_half_way_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    real_ip = netns.ip
    calls = {"netns add": 0}

    def failing_ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        if args[:2] == ("netns", "add"):
            calls["netns add"] += 1
            if calls["netns add"] == 2:
                raise LpflError("simulated failure on the second namespace")
        result: subprocess.CompletedProcess[str] = real_ip(*args, check=check)
        return result

    monkeypatch.setattr(netns, "ip", failing_ip)
    ns = Namespaces(3)
    with pytest.raises(LpflError, match="simulated"), ns:
        pass
    monkeypatch.undo()
    assert list_owned(ns.prefix) == ([], [])
    netns.cleanup(ns.prefix)  # idempotent


def test_without_root_field_exits_2_and_creates_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    out = tmp_path / "out"
    args = parser.parse_args(["field", "--config", "run.toml", "--out", str(out)])
    assert args.func(args) == 2
    assert "needs root" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(netns.NotPermitted):
        Namespaces(1)
