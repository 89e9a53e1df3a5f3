"""Progress bars: drawn on a terminal at INFO, never into a log, a pipe or under -q."""

from __future__ import annotations

import io
import logging

import pytest

from lpfl import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> Terminal:
    """stderr as a terminal, lpfl at INFO (set in the test body: pytest's capture replaces
    sys.stderr again between a fixture and the test)."""
    stream = Terminal()
    monkeypatch.setattr("sys.stderr", stream)
    logging.getLogger("lpfl").setLevel(logging.INFO)
    return stream


def test_a_bar_on_a_terminal_names_what_runs_and_yields_every_item(
        monkeypatch: pytest.MonkeyPatch) -> None:
    tty = on_a_terminal(monkeypatch)
    assert list(progress.bar(range(3), 3, "scoring 300 texts")) == [0, 1, 2]
    assert "scoring 300 texts" in tty.getvalue()
    with progress.stages("score program", ("quantize", "lower")) as step:
        step("quantize")
        step("lower")
    assert "score program" in tty.getvalue() and "lower" in tty.getvalue()


def test_no_bar_under_quiet_or_off_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    tty = on_a_terminal(monkeypatch)
    logging.getLogger("lpfl").setLevel(logging.WARNING)  # -q
    assert list(progress.bar(range(2), 2, "scoring")) == [0, 1]
    assert tty.getvalue() == ""
    logging.getLogger("lpfl").setLevel(logging.INFO)
    piped = io.StringIO()
    monkeypatch.setattr("sys.stderr", piped)
    list(progress.bar(range(2), 2, "scoring"))
    assert piped.getvalue() == "" and not progress.shown()
