"""``lpfl device push|run|pull``: an LP-FL client on an Android emulator or phone over adb.

The supported route is a Python client in a Termux-style prefix on the device (``route =
"termux"`` in the device profile: ``python`` points at that prefix's interpreter, with torch and
lpfl installed there; see docs/devices.md). An ExecuTorch runner binary cannot be the client: it
runs a program forward, while a round needs LoRA training and a websocket.

- ``push`` copies the run file, the device profile and (optionally) the exported artefacts into
  the profile's ``device_dir``, after checking the device's ABI matches the profile.
- ``run`` forwards the server's port to the device (``adb reverse``), writes the client's start
  script there and runs it in the foreground; the client checks its memory budget first
  (``--profile``) and exits when the server says the run is finished.
- ``pull`` fetches the client's log and exit status and the device's identity into
  ``OUT/devices/SERIAL/`` beside the server's ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

from lpfl.android_harness.adb import Adb, AdbError
from lpfl.errors import ConfigError, LpflError
from lpfl.profiles.devices import DeviceProfile, load_device_profile, profile_path

logger = logging.getLogger(__name__)

ABIS = {"arm64-v8a": "aarch64", "x86_64": "x86_64"}
"""Android's ``ro.product.cpu.abi`` -> the profile's ``cpu_arch``."""
SCRIPT = "client.sh"
STATUS = "status.json"
LOG = "client.log"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``lpfl device`` with its ``push``, ``run`` and ``pull`` actions."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "device", help="run an LP-FL client on an Android emulator or phone (adb)",
        description=__doc__.split("\n\n")[0] if __doc__ else None)
    actions = parser.add_subparsers(dest="action", required=True)
    push = _action(actions, "push", "copy the run file, profile and artefacts to the device")
    push.add_argument("--config", type=Path, required=True, help="TOML run file (the server's)")
    push.add_argument("--artefacts", type=Path, help="exported artefact folder to copy too")
    push.set_defaults(func=cmd_push)
    run = _action(actions, "run", "forward the server port and run the client on the device")
    run.add_argument("--server", required=True, help="the server's ws://HOST:PORT on this machine")
    run.add_argument("--client-id", required=True, help="this client's id (as in the tokens)")
    run.add_argument("--token", default=os.environ.get("LPFL_TOKEN", ""),
                     help="this client's secret token (default: $LPFL_TOKEN)")
    run.set_defaults(func=cmd_run)
    pull = _action(actions, "pull", "fetch the client's log and status into the run folder")
    pull.add_argument("--out", type=Path, required=True, help="the run folder (the server's)")
    pull.set_defaults(func=cmd_pull)
    return parser


def _action(actions: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    sub: argparse.ArgumentParser = actions.add_parser(name, help=help_text)
    sub.add_argument("--serial", required=True, help="adb serial (adb devices)")
    sub.add_argument("--profile", required=True,
                     help="device profile TOML, or the name of a shipped profile")
    return sub


def _connect(args: argparse.Namespace) -> tuple[Adb, DeviceProfile, PurePosixPath]:
    """The attached device, its profile (an adb route) and the profile's folder on it."""
    profile = load_device_profile(args.profile)
    if profile.route != "termux":
        raise ConfigError(f"device profile {profile.name} has route={profile.route!r}: it is "
                          "not an adb device; log in to it and run `lpfl client --profile "
                          f"{profile.name} ...` there (docs/devices.md, Jetson)")
    adb = Adb(args.serial)
    adb.check_attached()
    return adb, profile, PurePosixPath(profile.device_dir)


def cmd_push(args: argparse.Namespace) -> int:
    adb, profile, remote = _connect(args)
    abi = adb.getprop("ro.product.cpu.abi")
    if ABIS.get(abi) != profile.cpu_arch:
        raise LpflError(f"device {args.serial} has ABI {abi!r}, profile {profile.name} is "
                        f"{profile.cpu_arch}: pick the profile that matches the device")
    adb.shell(f"mkdir -p {shlex.quote(str(remote))}")
    adb.push(args.config, str(remote / "run.toml"))
    adb.push(profile_path(args.profile), str(remote / "profile.toml"))
    if args.artefacts is not None:
        if not args.artefacts.is_dir():
            raise ConfigError(f"--artefacts {args.artefacts} is not a folder")
        adb.push(args.artefacts, str(remote / "artefacts"))
    print(f"pushed the run to {args.serial}:{remote}")
    return 0


def start_script(profile: DeviceProfile, remote: PurePosixPath, port: int, client_id: str,
                 token: str) -> str:
    """The shell script that runs the client on the device and records its exit status."""
    prefix = PurePosixPath(profile.python).parent.parent
    client = shlex.join([profile.python, "-m", "lpfl.cli", "client", "--server",
                         f"ws://127.0.0.1:{port}", "--client-id", client_id,
                         "--config", "run.toml", "--profile", "profile.toml"])
    q = shlex.quote
    return "\n".join([
        "#!/system/bin/sh",
        "# Written by `lpfl device run`; holds the client's token: keep it private.",
        f"cd {q(str(remote))} || exit 1",
        f"export PREFIX={q(str(prefix))} HOME={q(str(remote))}",
        'export LD_LIBRARY_PATH="$PREFIX/lib" PATH="$PREFIX/bin:$PATH"',
        f"export LPFL_TOKEN={q(token)}",
        "started=$(date +%s)",
        f"{client} > {LOG} 2>&1",
        "code=$?",
        f'echo "{{\\"exit_code\\": $code, \\"started\\": $started, '
        f'\\"finished\\": $(date +%s)}}" > {STATUS}',
        "exit $code", ""])


def cmd_run(args: argparse.Namespace) -> int:
    adb, profile, remote = _connect(args)
    url = urlparse(args.server)
    if url.scheme != "ws" or url.port is None:
        raise ConfigError(f"--server {args.server!r}: give ws://HOST:PORT with an explicit port "
                          "(the harness does not push a wss:// certificate to the device)")
    if not args.token:
        raise ConfigError("the client token is empty: pass --token or set LPFL_TOKEN")
    script = start_script(profile, remote, url.port, args.client_id, args.token)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / SCRIPT
        local.write_text(script, encoding="utf-8")
        adb.push(local, str(remote / SCRIPT))
    adb.shell(f"chmod 600 {shlex.quote(str(remote / SCRIPT))}")
    adb.reverse(url.port)
    print(f"client {args.client_id} on {args.serial} -> host port {url.port}", flush=True)
    try:
        adb.shell(f"sh {shlex.quote(str(remote / SCRIPT))}", timeout_s=None)
    except AdbError as exc:
        raise LpflError(f"the client on {args.serial} failed ({exc}); `lpfl device pull` "
                        f"fetches its {LOG}") from None
    finally:
        adb.remove_reverse(url.port)
    print(f"client {args.client_id} on {args.serial} finished")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    adb, profile, remote = _connect(args)
    folder = args.out / "devices" / re.sub(r"[^A-Za-z0-9._-]", "_", args.serial)
    folder.mkdir(parents=True, exist_ok=True)
    for name in (LOG, STATUS):
        adb.pull(str(remote / name), folder / name)
    log_text = (folder / LOG).read_text(encoding="utf-8", errors="replace")
    trained = re.findall(r"trained (\d+) rounds", log_text)
    meminfo = adb.shell("cat /proc/meminfo")
    total_kb = re.search(r"MemTotal:\s+(\d+)", meminfo)
    device = {
        "serial": args.serial, "profile": profile.name,
        "model": adb.getprop("ro.product.model"), "abi": adb.getprop("ro.product.cpu.abi"),
        "android": adb.getprop("ro.build.version.release"),
        "memory_bytes": int(total_kb.group(1)) * 1024 if total_kb else 0,
        "status": json.loads((folder / STATUS).read_text(encoding="utf-8")),
        "rounds_trained": int(trained[-1]) if trained else 0,
    }
    (folder / "device.json").write_text(json.dumps(device, indent=1), encoding="utf-8")
    print(f"pulled {args.serial}'s {LOG} and {STATUS} into {folder}")
    return 0
