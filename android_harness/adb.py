"""A thin, checked wrapper around the ``adb`` command for one device.

Every call is ``adb -s SERIAL ...`` (never "the only device attached": a bench with an emulator
and a phone must not push to the wrong one). A failing call raises :class:`AdbError` with adb's
own message. ``adb`` is looked up on ``PATH`` (or ``$LPFL_ADB``), which is how the tests put a fake
one in its place.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
from pathlib import Path

from lpfl.errors import LpflError

logger = logging.getLogger(__name__)


class AdbError(LpflError):
    """adb is missing, the device is not attached, or a command on it failed."""


class Adb:
    """``adb`` bound to one device serial."""

    def __init__(self, serial: str, executable: str | None = None) -> None:
        found = executable or os.environ.get("LPFL_ADB") or shutil.which("adb")
        if not found:
            raise AdbError("adb is not on PATH: install the Android platform tools "
                           "(apt-get install adb) or set LPFL_ADB")
        self.serial = serial
        self.executable = found

    def call(self, *args: str, timeout_s: float | None = 120.0) -> str:
        """``adb -s SERIAL ARGS...``; its stdout, or :class:`AdbError` with its message."""
        argv = [self.executable, "-s", self.serial, *args]
        logger.debug("%s", shlex.join(argv))
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                                  check=False)
        except subprocess.TimeoutExpired:
            raise AdbError(f"adb {shlex.join(args)} on {self.serial} did not finish within "
                           f"{timeout_s:.0f} s") from None
        if proc.returncode != 0:
            message = (proc.stderr or proc.stdout).strip() or f"exit {proc.returncode}"
            raise AdbError(f"adb {shlex.join(args)} on {self.serial}: {message}")
        return proc.stdout

    def check_attached(self) -> None:
        """:class:`AdbError` unless the device is attached and authorised (state ``device``)."""
        state = self.call("get-state", timeout_s=30).strip()
        if state != "device":
            raise AdbError(f"device {self.serial} is {state!r}, not ready: unlock it and "
                           "accept the USB debugging prompt")

    def shell(self, command: str, timeout_s: float | None = 120.0) -> str:
        """Run a shell command line on the device (adb passes its exit status back)."""
        return self.call("shell", command, timeout_s=timeout_s)

    def push(self, local: Path, remote: str) -> None:
        self.call("push", str(local), remote, timeout_s=1800)

    def pull(self, remote: str, local: Path) -> None:
        self.call("pull", remote, str(local), timeout_s=1800)

    def reverse(self, port: int) -> None:
        """Make the device's ``127.0.0.1:port`` reach this machine's ``port`` (the server)."""
        self.call("reverse", f"tcp:{port}", f"tcp:{port}")

    def remove_reverse(self, port: int) -> None:
        self.call("reverse", "--remove", f"tcp:{port}")

    def getprop(self, name: str) -> str:
        return self.shell(f"getprop {shlex.quote(name)}").strip()
