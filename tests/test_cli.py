"""The ``lpfl`` command itself: version, ``-q``/``-v`` everywhere, defaults in ``--help``, quiet
start-up, and Ctrl-C ending with exit code 130 and the finished runs kept."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lpfl import logs
from lpfl.cli import INTERRUPTED, _subparsers, build_parser, main
from tests.conftest import write_run_file


def _all_subcommands(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = list(_subparsers(parser))
    assert len(found) >= 12  # simulate ... bench accuracy, device push/run/pull
    return found


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip().startswith("lpfl 0.")


def test_every_subcommand_takes_quiet_and_verbose() -> None:
    parser = build_parser()
    for sub in _all_subcommands(parser):
        options = sub._option_string_actions
        assert {"-q", "--quiet", "-v", "--verbose"} <= set(options), sub.prog
    before = parser.parse_args(["-v", "simulate", "--out", "x"])
    after = parser.parse_args(["simulate", "--out", "x", "-v"])
    assert before.verbose and after.verbose and not after.quiet
    assert parser.parse_args(["bench", "accuracy", "-q"]).quiet
    assert not parser.parse_args(["simulate", "--out", "x"]).verbose
    with pytest.raises(SystemExit):
        parser.parse_args(["simulate", "--out", "x", "-q", "-v"])


def test_help_shows_defaults_but_never_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LPFL_TOKEN", "s3cret-token-from-the-environment")
    parser = build_parser()
    helps = {sub.prog: " ".join(sub.format_help().split()) for sub in _all_subcommands(parser)}
    client = helps["lpfl client"]
    assert "(default: eager)" in client and "(default: 600.0)" in client
    assert "(default: 32)" in helps["lpfl predict"]
    assert "(default: 3)" in helps["lpfl launch"]
    assert all("s3cret" not in text for text in helps.values())
    assert all("(default: None)" not in text and "(default: False)" not in text
               for text in helps.values())
    assert "(default 600)" not in client  # said once, by the formatter


def test_logging_levels_follow_quiet_and_verbose() -> None:
    try:
        for verbosity, own, third in ((logs.QUIET, logging.WARNING, logging.WARNING),
                                      (logs.NORMAL, logging.INFO, logging.WARNING),
                                      (logs.VERBOSE, logging.DEBUG, logging.INFO)):
            logs.configure(verbosity)
            assert logging.getLogger("lpfl").level == own
            assert logging.getLogger().level == third
            pytree = logging.getLogger("torch.utils._pytree")
            record = pytree.makeRecord("torch.utils._pytree", logging.WARNING, "x", 1,
                                       "%s: calling register_constant() on Enum subclasses is "
                                       "deprecated", ("Kind",), None)
            assert pytree.filter(record) == (verbosity == logs.VERBOSE)
            assert logging.getLogger("torchao.kernel.intmm").isEnabledFor(logging.WARNING) == (
                verbosity == logs.VERBOSE)
    finally:
        logs.configure(logs.NORMAL)
        logging.getLogger().setLevel(logging.WARNING)


def _wait_for(path: Path, text: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and text in path.read_text(errors="replace"):
            return
        if process.poll() is not None:
            pytest.fail(f"exited early ({process.returncode}):\n{path.read_text()[-3000:]}")
        time.sleep(0.2)
    process.kill()
    pytest.fail(f"no {text!r} within {timeout} s:\n{path.read_text()[-3000:]}")


def _interruptible() -> None:
    """Give the child the default SIGINT disposition: a test run started in the background of a
    non-interactive shell inherits SIGINT ignored, and Python then never raises
    KeyboardInterrupt (the user's terminal, which this test stands for, does not ignore it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_keeps_the_finished_runs_and_exits_130_without_a_traceback(
        tmp_path: Path) -> None:
    run_file = write_run_file(tmp_path / "run.toml", federation={"rounds": 200},
                              run={"methods": ["zero-shot", "lp-fl"]})
    out = tmp_path / "out"
    stderr = tmp_path / "stderr.txt"
    with stderr.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "lpfl.cli", "simulate", "--config", str(run_file),
             "--out", str(out)], stdout=subprocess.DEVNULL, stderr=err,
            env={**os.environ, "PYTHONWARNINGS": ""}, preexec_fn=_interruptible)
        try:
            _wait_for(stderr, "[lp-fl seed 0] round 2/200", process, timeout=120)
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=60) == INTERRUPTED
        finally:
            if process.poll() is None:
                process.kill()
    text = stderr.read_text()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text
    assert "lpfl simulate: interrupted" in text
    assert f"the finished runs are in {out / 'results.json'}" in text
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert [run["method"] for run in runs] == ["zero-shot"]
    assert (out / "report.md").is_file()
    # Our own INFO is shown; the known start-up noise of torch and torchao is not.
    assert "lpfl.data.federated INFO" in text
    for noise in ("torchao", "register_constant", "Triton"):
        assert noise not in text
