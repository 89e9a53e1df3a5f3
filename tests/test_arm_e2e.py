"""An emulated aarch64 client and a native client federate against a real `lpfl server`.

The aarch64 client is the real `lpfl client` under qemu-user in the cached arm64 root
(lpfl.android_harness.arm_rootfs); building that root takes 5-10 minutes once, so the federation
test is marked slow (`make arm-e2e`). It skips, saying why, where the machine cannot run aarch64
code (not root, no qemu-user or binfmt_misc); a root that fails to build (debootstrap, pip) fails
it, and it never passes without running the clients.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from lpfl.android_harness import arm_rootfs
from lpfl.android_harness.arm_client import (
    BackendChoice,
    choose_backend,
    client_command,
    installed_versions,
    read_manifest,
    source_tree,
    start_arm_client,
)
from lpfl.errors import ConfigError
from lpfl.harness.launch import (
    free_port,
    prepare_run_dir,
    stop_processes,
    wait_for_port,
    watch_rounds,
)
from lpfl.results import read_document

RUN = Path(__file__).parent.parent / "configs" / "arm_e2e.toml"


EXPORTED = {"programs": [{"role": "score", "runtime": "executorch", "runtime_version": "1.5.1"},
                         {"role": "score", "runtime": "onnxruntime", "runtime_version": "1.32.0"}]}


def test_a_matching_runtime_version_is_used() -> None:
    choice = choose_backend(EXPORTED, {"onnxruntime": "1.32.0", "torch": "2.9.1"})
    assert choice == BackendChoice("onnxruntime", "onnxruntime 1.32.0 matches the manifest's "
                                   "runtime_version")
    top_level = {"runtime": "executorch", "runtime_version": "1.5.1"}
    assert choose_backend(top_level, {"executorch": "1.5.1"}).backend == "executorch"


def test_another_runtime_version_falls_back_to_eager_and_says_why() -> None:
    choice = choose_backend(EXPORTED, {"executorch": "1.0.1", "torch": "2.9.1"})
    assert choice.backend == "eager"
    assert ("the artefacts need executorch 1.5.1, onnxruntime 1.32.0, this client has "
            "executorch 1.0.1") in choice.reason
    assert "neither executorch nor onnxruntime" in choose_backend(EXPORTED, {}).reason
    assert choose_backend(None, {}).backend == "eager"


def test_the_manifest_is_read_as_json(tmp_path: Path) -> None:
    assert read_manifest(None) is None
    with pytest.raises(ConfigError, match="export the artefacts first"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text('{"runtime": "onnxruntime"}')
    assert read_manifest(tmp_path) == {"runtime": "onnxruntime"}


def test_the_source_tree_follows_the_package_dir_mapping(tmp_path: Path) -> None:
    package = source_tree(tmp_path) / "lpfl"
    assert os.readlink(package / "edge_client") == "/lpfl-src/edge_client"
    assert os.readlink(package / "server") == "/lpfl-src/server"
    assert os.readlink(package / "cli.py") == "/lpfl-src/lpfl/cli.py"


def test_the_chroot_mounts_live_in_a_private_namespace_and_the_token_in_its_environment(
        tmp_path: Path) -> None:
    command = arm_rootfs.chroot_command(tmp_path, ["python", "-V"],
                                        binds={Path("/repo"): "/src"}, env={"LPFL_TOKEN": "t0k"})
    assert command.argv[:4] == ["unshare", "--mount", "--propagation", "private"]
    script = command.argv[-1]
    assert f"mount -t proc proc {tmp_path}/proc" in script
    assert f"mount --bind /repo {tmp_path}/src" in script
    assert script.endswith(f"exec chroot {tmp_path} python -V")
    assert all("t0k" not in arg for arg in command.argv)
    assert command.env["LPFL_TOKEN"] == "t0k" and "PIP_CERT" not in command.env
    assert command.env["PATH"].startswith("/opt/lpfl-venv/bin:")


def test_a_program_backend_gets_its_artefact_mounted(tmp_path: Path) -> None:
    artefacts = tmp_path / "artefacts"
    program = BackendChoice("executorch", "matches")
    command = client_command(tmp_path / "root", tmp_path, RUN, "ws://127.0.0.1:1", "client-1",
                             "t0k", program, artefacts, profile="emulator-arm64")
    script = command.argv[-1]
    assert f"mount --bind {artefacts} {tmp_path}/root/lpfl-artefact" in script
    assert script.endswith("--config /lpfl-run/arm-client-1.toml --backend executorch "
                           "--artefact /lpfl-artefact --profile emulator-arm64")
    eager = client_command(tmp_path / "root", tmp_path, RUN, "ws://127.0.0.1:1", "client-1",
                           "t0k", BackendChoice("eager", "no manifest"), artefacts)
    assert "--backend" not in eager.argv[-1] and "lpfl-artefact" not in eager.argv[-1]


def test_a_half_built_root_is_not_ready(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LPFL_CACHE", str(tmp_path))
    root = arm_rootfs.rootfs_path()
    (root / "usr").mkdir(parents=True)
    assert arm_rootfs.ready_rootfs() is None  # no stamp: the build did not finish
    arm_rootfs.Stamp(arm_rootfs.SUITE, ("torch==2.13.0",), 1.0).write(root)
    assert arm_rootfs.ready_rootfs() is None  # built from other pins
    arm_rootfs.Stamp(arm_rootfs.SUITE, arm_rootfs.PINNED, 1.0).write(root)
    assert arm_rootfs.ready_rootfs() == root


def arm_root_or_skip() -> Path:
    """The cached root (built if needed), or a skip that says what this machine lacks.

    Only the machine may skip: no root, or no qemu-aarch64 binfmt (host tools that cannot be
    installed, binfmt_misc that cannot be mounted or enabled). Once it can run aarch64 code, a
    failed root build (debootstrap, or pip installing the pinned client packages) fails the test.
    """
    if os.geteuid() != 0:
        pytest.skip("emulated aarch64 clients need root (debootstrap, chroot, mounts)")
    try:
        arm_rootfs.ensure_host_tools()
    except arm_rootfs.ArmUnavailable as exc:
        pytest.skip(f"this machine cannot run aarch64 code under qemu: {exc}")
    return arm_rootfs.ensure_rootfs()


def test_only_a_machine_that_cannot_emulate_skips(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def outcome() -> str:
        """What :func:`arm_root_or_skip` does, as text (a skip must not skip this test)."""
        try:
            return f"root {arm_root_or_skip()}"
        except pytest.skip.Exception as exc:
            return f"skip: {exc}"
        except arm_rootfs.ArmUnavailable as exc:
            return f"error: {exc}"

    def unavailable(message: str) -> Callable[[], Path]:
        def fail() -> Path:
            raise arm_rootfs.ArmUnavailable(message)
        return fail

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert outcome().startswith("skip: ") and "root" in outcome()
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(arm_rootfs, "ensure_host_tools",
                        unavailable("the kernel has no enabled qemu-aarch64 binfmt entry"))
    assert outcome().startswith("skip: ") and "binfmt" in outcome()
    monkeypatch.setattr(arm_rootfs, "ensure_host_tools", lambda: None)
    monkeypatch.setattr(arm_rootfs, "ensure_rootfs",
                        unavailable("installing the aarch64 client packages failed (exit 1)"))
    assert outcome() == "error: installing the aarch64 client packages failed (exit 1)"
    monkeypatch.setattr(arm_rootfs, "ensure_rootfs", lambda: tmp_path)
    assert outcome() == f"root {tmp_path}"


@pytest.mark.slow
def test_an_emulated_aarch64_client_and_a_native_one_federate(tmp_path: Path) -> None:
    root = arm_root_or_skip()
    assert "torch" in installed_versions(root)
    out = tmp_path / "run"
    ids = ["client-0", "client-1"]
    tokens, tokens_file = prepare_run_dir(out, ids)
    port = free_port()
    server_url = f"ws://127.0.0.1:{port}"
    overrides = [f"server.port={port}", f"server.run_dir='{out}'",
                 f"server.tokens_file='{tokens_file}'"]
    cli = [sys.executable, "-m", "lpfl.cli"]
    with (out / "server.log").open("wb") as server_log:
        server = subprocess.Popen(
            [*cli, "server", "--config", str(RUN),
             *[arg for o in overrides for arg in ("--set", o)]],
            stdout=server_log, stderr=subprocess.STDOUT)
    procs = [server]
    try:
        wait_for_port(port, server, timeout_s=300)
        with (out / "client-0.log").open("wb") as native_log:
            procs.append(subprocess.Popen(
                [*cli, "client", "--server", server_url, "--client-id", "client-0",
                 "--config", str(RUN)], stdout=native_log, stderr=subprocess.STDOUT,
                env={**os.environ, "LPFL_TOKEN": tokens["client-0"]}))
        artefacts = tmp_path / "artefacts"  # exported for the host's runtime, not the client's
        artefacts.mkdir()
        (artefacts / "manifest.json").write_text(json.dumps(EXPORTED))
        procs.append(start_arm_client(out, RUN, server_url, "client-1", tokens["client-1"],
                                      artefacts, profile="emulator-arm64"))
        watch_rounds(server, out / "results.json", 2, timeout_s=1500)
        procs[2].wait(timeout=300)  # the emulated client leaves slowly after the server's bye
    finally:
        stop_processes(procs)
    rounds = read_document(out / "results.json")["runs"][0]["records"]
    assert [r["round"] for r in rounds] == [1, 2]
    for record in rounds:
        statuses = {c["client_id"]: c["status"] for c in record["clients"]}
        assert statuses == {"client-0": "updated", "client-1": "updated"}, statuses
        archs = {c["client_id"]: c["capabilities"]["cpu_arch"] for c in record["clients"]}
        assert archs == {"client-0": "x86_64", "client-1": "aarch64"}, archs
    assert procs[2].returncode == 0, (out / "client-1.log").read_text()[-3000:]
    backend = json.loads((out / "client-1.backend.json").read_text())
    assert backend["backend"] == "eager" and "executorch 1.5.1" in backend["reason"]
