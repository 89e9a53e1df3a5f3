"""Run the real ``lpfl client`` as an emulated aarch64 process against a server on this machine.

The client runs in the cached arm64 root (:mod:`lpfl.android_harness.arm_rootfs`) under
qemu-user, with this checkout's source mounted at ``/lpfl-src`` and the run folder at
``/lpfl-run``; it shares the host's network, so ``ws://127.0.0.1:PORT`` reaches the server. Its
hello says ``cpu_arch = aarch64`` because that is what the emulated kernel interface reports.

Version discipline: an exported program must be run by the runtime version that wrote it. Given
the artefact folder's ``manifest.json`` (``runtime``, ``runtime_version``), :func:`choose_backend`
picks that runtime only if the aarch64 environment has exactly that version, and eager PyTorch
otherwise, and says why. The pinned aarch64 environment has no ExecuTorch of the host's version
(torch 2.9.1 is the newest torch that runs under this qemu), so in practice it chooses eager.

``python -m lpfl.android_harness.arm_client --server ws://127.0.0.1:PORT --client-id client-1
--config RUN.toml [--artefacts DIR]`` (token in ``$LPFL_TOKEN``) runs one such client.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lpfl.android_harness.arm_rootfs import (
    RUN_MOUNT,
    SRC_MOUNT,
    VENV,
    ChrootCommand,
    chroot_command,
    ensure_rootfs,
)
from lpfl.errors import ConfigError

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
EXPORT_RUNTIMES = ("executorch", "onnxruntime")
ARTEFACT_MOUNT = "/lpfl-artefact"
"""Where a client with a program backend sees the artefact folder, inside the root."""


@dataclass(frozen=True)
class BackendChoice:
    """The backend an emulated client runs, and why (printed and written beside its log)."""

    backend: str
    reason: str


def read_manifest(artefacts: Path | None) -> dict[str, Any] | None:
    """``ARTEFACTS/manifest.json`` as a dict; None without an artefact folder."""
    if artefacts is None:
        return None
    path = artefacts / "manifest.json"
    try:
        manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist: export the artefacts first") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    return manifest


def choose_backend(manifest: Mapping[str, Any] | None,
                   installed: Mapping[str, str]) -> BackendChoice:
    """The first exported runtime whose exact version is installed, else eager PyTorch.

    The runtime and ``runtime_version`` are read from each entry of the manifest's ``programs``
    (the manifest of :mod:`lpfl.artefact`), or from its top level when it has no such
    list. ``installed`` maps lower-case distribution names to versions
    (:func:`installed_versions`).
    """
    if manifest is None:
        return BackendChoice("eager", "no artefact manifest: eager PyTorch")
    entries: list[Mapping[str, Any]] = manifest.get("programs") or [manifest]
    for entry in entries:
        runtime, wanted = str(entry.get("runtime")), str(entry.get("runtime_version"))
        if runtime in EXPORT_RUNTIMES and installed.get(runtime) == wanted:
            return BackendChoice(runtime, f"{runtime} {wanted} matches the manifest's "
                                 "runtime_version")
    needs = ", ".join(sorted({f"{e.get('runtime')} {e.get('runtime_version')}" for e in entries}))
    found = ", ".join(f"{r} {installed[r]}" for r in EXPORT_RUNTIMES if r in installed)
    return BackendChoice("eager", f"the artefacts need {needs}, this client has "
                         f"{found or 'neither executorch nor onnxruntime'} (a program must be run "
                         "by the version that wrote it): eager PyTorch")


def installed_versions(root: Path) -> dict[str, str]:
    """Distribution name -> version in the root's client venv, read from its metadata files
    (no emulated Python needed)."""
    sites = list((root / VENV.lstrip("/") / "lib").glob("python3*/site-packages"))
    return {dist.metadata["Name"].lower(): dist.version
            for dist in importlib.metadata.distributions(path=[str(s) for s in sites])}


def source_tree(run_dir: Path) -> Path:
    """``RUN/arm-src/lpfl``: the installed package layout as links into ``/lpfl-src``.

    setuptools maps ``lpfl.server`` to ``server/`` and so on (``package-dir`` in pyproject.toml);
    the links recreate that layout for ``PYTHONPATH`` inside the root, so the emulated client
    always runs this checkout's code without a reinstall.
    """
    mapping = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))[
        "tool"]["setuptools"]["package-dir"]
    top = run_dir / "arm-src"
    shutil.rmtree(top, ignore_errors=True)
    package = top / "lpfl"
    package.mkdir(parents=True)
    for entry in (REPO / mapping["lpfl"]).iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(f"{SRC_MOUNT}/{mapping['lpfl']}/{entry.name}")
    for name, folder in mapping.items():
        if name.count(".") == 1:
            (package / name.split(".")[1]).symlink_to(f"{SRC_MOUNT}/{folder}")
    return top


def client_command(root: Path, run_dir: Path, config: Path, server: str, client_id: str,
                   token: str, choice: BackendChoice, artefacts: Path | None = None,
                   profile: str | None = None) -> ChrootCommand:
    """The command of one emulated client; ``config`` is copied into ``run_dir``, and the
    artefact folder is mounted when ``choice`` is a program backend."""
    inside_config = f"{RUN_MOUNT}/arm-{client_id}.toml"
    shutil.copyfile(config, run_dir / f"arm-{client_id}.toml")
    tree = source_tree(run_dir)
    argv = [f"{VENV}/bin/python", "-m", "lpfl.cli", "client", "--server", server,
            "--client-id", client_id, "--config", inside_config]
    binds = {REPO: SRC_MOUNT, run_dir.resolve(): RUN_MOUNT}
    if choice.backend != "eager" and artefacts is not None:
        binds[artefacts.resolve()] = ARTEFACT_MOUNT
        argv += ["--backend", choice.backend, "--artefact", ARTEFACT_MOUNT]
    if profile is not None:
        argv += ["--profile", profile]
    env = {"PYTHONPATH": f"{RUN_MOUNT}/{tree.name}", "LPFL_TOKEN": token,
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
    return chroot_command(root, argv, binds=binds, env=env)


def start_arm_client(run_dir: Path, config: Path, server: str, client_id: str, token: str,
                     artefacts: Path | None = None,
                     profile: str | None = None) -> subprocess.Popen[bytes]:
    """Start one emulated aarch64 client (building the root first if needed); its output goes
    to ``RUN/CLIENT.log`` and its backend choice to ``RUN/CLIENT.backend.json``."""
    root = ensure_rootfs()
    choice = choose_backend(read_manifest(artefacts), installed_versions(root))
    logger.info("aarch64 client %s: backend %s (%s)", client_id, choice.backend, choice.reason)
    (run_dir / f"{client_id}.backend.json").write_text(
        json.dumps({"backend": choice.backend, "reason": choice.reason}), encoding="utf-8")
    command = client_command(root, run_dir, config, server, client_id, token, choice, artefacts,
                             profile)
    with (run_dir / f"{client_id}.log").open("wb") as log:
        return subprocess.Popen(command.argv, stdout=log, stderr=subprocess.STDOUT,
                                env=command.env)


def main(argv: list[str] | None = None) -> int:
    """Run one emulated aarch64 client in the foreground; its exit code."""
    parser = argparse.ArgumentParser(prog="python -m lpfl.android_harness.arm_client",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--server", required=True, help="ws://127.0.0.1:PORT")
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--config", type=Path, required=True, help="TOML run file")
    parser.add_argument("--artefacts", type=Path, help="exported artefacts (manifest.json)")
    parser.add_argument("--profile", help="device profile name or path inside the root")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/arm-client"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.run_dir.mkdir(parents=True, exist_ok=True)
    proc = start_arm_client(args.run_dir, args.config, args.server, args.client_id,
                            os.environ.get("LPFL_TOKEN", ""), args.artefacts, args.profile)
    code = proc.wait()
    print(f"aarch64 client {args.client_id} exited {code}; log in "
          f"{args.run_dir / (args.client_id + '.log')}")
    return code


if __name__ == "__main__":
    sys.exit(main())
