"""An arm64 Debian root file system with a pinned aarch64 client environment, built once.

Emulated ARM clients run the real ``lpfl client`` under qemu-user in a chroot of this root: the
code path is the one a Raspberry Pi or a Jetson takes, only ~300x slower on matrix products, so
only a tiny model is practical here. Building needs root, ``debootstrap`` and
``qemu-user-static`` with a binfmt registration (installed with apt if missing) and 10-30 minutes
(debootstrap's second stage and pip both run emulated); the result is cached under
``$LPFL_CACHE/arm64-rootfs`` (default ``~/.cache/lpfl``). pip in the root trusts the host's CA
bundle, so a TLS-inspecting proxy in front of PyPI works there as it does on the host.

A half-built root is never reused: the build goes to ``arm64-rootfs.partial``, writes its stamp
(the Debian suite and the pinned packages) last and is renamed into place; a root whose stamp
does not match :data:`PINNED` is rebuilt. Only a finished debootstrap stage (its own marker) is
kept for a retry; the venv is always recreated. A lock file serialises concurrent builders. Every
mount (``/proc``, ``/dev``, the repository) lives in a private mount namespace (``unshare``), so
nothing stays mounted when a build or a client is killed.

torch is 2.9.1: the torch 2.13 aarch64 wheel segfaults on import under Debian bookworm's qemu 7.2.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lpfl.errors import LpflError

logger = logging.getLogger(__name__)

SUITE = "bookworm"
VENV = "/opt/lpfl-venv"
"""The aarch64 client environment, inside the root."""
SRC_MOUNT = "/lpfl-src"
RUN_MOUNT = "/lpfl-run"
"""Where a client sees the repository and its run folder, inside the root."""
PINNED = (
    "torch==2.9.1",
    "numpy==2.4.6",
    "websockets==17.4",
    "safetensors==0.8.0",
    "tokenizers==0.22.2",
    "transformers==4.57.6",
    "huggingface_hub==0.36.2",
    "peft==0.21.2",
    "accelerate==1.15.0",
)
"""The aarch64 client's Python packages; changing this list rebuilds the cached root."""
HOST_PACKAGES = ("qemu-user-static", "binfmt-support", "debootstrap")
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
STAMP_NAME = "lpfl-stamp.json"
BASE_DONE = "lpfl-base.done"
"""Marks a partial root whose debootstrap finished: a retry after a failed venv step keeps it."""
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
CA_INSIDE = "/etc/lpfl-host-ca.crt"
"""The host's CA bundle, for pip in the root: a TLS-inspecting proxy's CA is only trusted there."""


class ArmUnavailable(LpflError):
    """This machine cannot build or run an emulated arm64 client; the message says why."""


@dataclass(frozen=True)
class Stamp:
    """What a finished root holds; written last, so its presence means the build completed."""

    suite: str
    packages: tuple[str, ...]
    build_seconds: float

    def matches(self) -> bool:
        """Whether this root was built from the current suite and pinned packages."""
        return self.suite == SUITE and self.packages == PINNED

    @classmethod
    def read(cls, root: Path) -> Stamp | None:
        """The stamp of ``root``, or None if it is missing or unreadable (an unfinished root)."""
        try:
            doc = json.loads((root / STAMP_NAME).read_text(encoding="utf-8"))
            return cls(str(doc["suite"]), tuple(doc["packages"]), float(doc["build_seconds"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write(self, root: Path) -> None:
        doc = {"suite": self.suite, "packages": list(self.packages),
               "build_seconds": self.build_seconds}
        (root / STAMP_NAME).write_text(json.dumps(doc, indent=1), encoding="utf-8")


def cache_dir() -> Path:
    """``$LPFL_CACHE``, else ``~/.cache/lpfl``."""
    return Path(os.environ.get("LPFL_CACHE") or Path.home() / ".cache" / "lpfl")


def rootfs_path() -> Path:
    """Where the finished root lives (it may not exist yet)."""
    return cache_dir() / "arm64-rootfs"


def ready_rootfs() -> Path | None:
    """The cached root if it is complete and matches :data:`PINNED`, else None."""
    root = rootfs_path()
    stamp = Stamp.read(root)
    return root if stamp is not None and stamp.matches() else None


def binfmt_registered() -> bool:
    """Whether the kernel runs aarch64 binaries through qemu (binfmt_misc, enabled)."""
    entry = BINFMT_DIR / "qemu-aarch64"
    try:
        return entry.read_text(encoding="utf-8").startswith("enabled")
    except OSError:
        return False


def ensure_host_tools() -> None:
    """Root, debootstrap, qemu-user-static and an enabled aarch64 binfmt entry, installing and
    registering what is missing; :class:`ArmUnavailable` says what could not be done."""
    if os.geteuid() != 0:
        raise ArmUnavailable("emulated arm64 clients need root (debootstrap, chroot, mounts); "
                             "run as root or on a machine where you are root")
    if not all(shutil.which(tool) for tool in ("debootstrap", "qemu-aarch64-static",
                                                 "update-binfmts", "unshare", "chroot")):
        logger.info("installing %s with apt-get", " ".join(HOST_PACKAGES))
        _run(["apt-get", "install", "-y", "-q", *HOST_PACKAGES],
             "apt-get could not install the arm64 build tools")
    if not (BINFMT_DIR / "status").exists():
        _run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)],
             "binfmt_misc cannot be mounted (a container without it cannot run aarch64 code)")
    if not binfmt_registered():
        _run(["update-binfmts", "--enable", "qemu-aarch64"],
             "the qemu-aarch64 binfmt entry cannot be enabled")
    if not binfmt_registered():
        raise ArmUnavailable("the kernel has no enabled qemu-aarch64 binfmt entry")


def _run(argv: Sequence[str], what: str, env: Mapping[str, str] | None = None) -> None:
    """Run a build step, raising :class:`ArmUnavailable` with ``what`` and its output's tail."""
    logger.debug("running %s", shlex.join(argv))
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip()[-2000:]
        raise ArmUnavailable(f"{what} (exit {proc.returncode}): {tail}")


@dataclass(frozen=True)
class ChrootCommand:
    """A command line and the whole environment to start it with (``subprocess`` ``env=``)."""

    argv: list[str]
    env: dict[str, str]


def chroot_command(root: Path, argv: Sequence[str], binds: Mapping[Path, str] = {},
                   env: Mapping[str, str] = {}) -> ChrootCommand:
    """Run ``argv`` inside ``root`` with a clean environment: ``env`` plus PATH, HOME and LANG.

    ``/proc``, ``/dev``, ``/sys`` and ``binds`` (host path -> path inside the root) are mounted in
    a private mount namespace that ends with the process, so a killed client leaves no mounts.
    Nothing of the host's environment is passed on (its ``PIP_*`` or ``PYTHON*`` settings must not
    reach the aarch64 Python), and values such as a token travel in the environment, never in a
    command line that ``ps`` shows.
    """
    mounts = [f"mount -t proc proc {shlex.quote(str(root / 'proc'))}",
              f"mount --bind /dev {shlex.quote(str(root / 'dev'))}",
              f"mount --bind /sys {shlex.quote(str(root / 'sys'))}"]
    for host, inside in binds.items():
        target = root / inside.lstrip("/")
        mounts.append(f"mkdir -p {shlex.quote(str(target))} && "
                      f"mount --bind {shlex.quote(str(host))} {shlex.quote(str(target))}")
    script = " && ".join([*mounts, "exec " + shlex.join(["chroot", str(root), *argv])])
    # The same PATH finds unshare and chroot on the host and the venv's python inside.
    path = f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    return ChrootCommand(["unshare", "--mount", "--propagation", "private", "--", "sh", "-ec",
                          script], {"PATH": path, "HOME": "/root", "LANG": "C.UTF-8", **env})


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_root(root: Path) -> None:
    """Delete a root, refusing if anything is still mounted beneath it (a host /dev, say)."""
    mounts = Path("/proc/self/mounts").read_text(encoding="utf-8").split("\n")
    busy = [line for line in mounts if f" {root}/" in line or f" {root} " in line]
    if busy:
        raise ArmUnavailable(f"{root} still has mounts ({len(busy)}); unmount them "
                             f"(umount -R) before rebuilding")
    shutil.rmtree(root, ignore_errors=True)


def ensure_rootfs() -> Path:
    """The cached arm64 root, built first if missing or stale; safe to call from several
    processes at once (one builds, the others wait and reuse it)."""
    root = ready_rootfs()
    if root is not None:
        return root
    ensure_host_tools()
    final = rootfs_path()
    with _locked(final.with_name("arm64-rootfs.lock")):
        if ready_rootfs() is not None:
            return final
        partial = final.with_name("arm64-rootfs.partial")
        if not (partial / BASE_DONE).exists():
            _remove_root(partial)
        started = time.monotonic()
        _build(partial)
        stamp = Stamp(SUITE, PINNED, round(time.monotonic() - started, 1))
        stamp.write(partial)
        _remove_root(final)
        partial.rename(final)
        logger.info("built %s in %.0f s", final, stamp.build_seconds)
    return final


def _build(root: Path) -> None:
    """debootstrap a minimal arm64 Debian into ``root`` (unless a previous attempt finished
    that stage) and create the pinned venv there afresh."""
    if not (root / BASE_DONE).exists():
        logger.info("debootstrap %s arm64 into %s (5-15 minutes)", SUITE, root)
        debootstrap = ["debootstrap", "--arch=arm64", "--variant=minbase",
                       "--include=python3,python3-venv,python3-pip,ca-certificates", SUITE,
                       str(root)]
        # debootstrap mounts /proc in the target; a private namespace drops it if we are killed.
        _run(["unshare", "--mount", "--propagation", "private", "--", *debootstrap],
             "debootstrap of the arm64 root failed")
        (root / BASE_DONE).touch()
    shutil.copyfile("/etc/resolv.conf", root / "etc" / "resolv.conf")
    cert = ""
    if HOST_CA.exists():
        shutil.copyfile(HOST_CA, root / CA_INSIDE.lstrip("/"))
        cert = f"--cert {CA_INSIDE} "
    for inside in (SRC_MOUNT, RUN_MOUNT):
        (root / inside.lstrip("/")).mkdir(exist_ok=True)
    shutil.rmtree(root / VENV.lstrip("/"), ignore_errors=True)
    logger.info("creating %s with %s (several minutes under emulation)", VENV, " ".join(PINNED))
    pip = f"{VENV}/bin/pip install -q --no-cache-dir {cert}" + " ".join(map(shlex.quote, PINNED))
    venv = chroot_command(root, ["sh", "-ec", f"python3 -m venv {VENV} && {pip}"])
    _run(venv.argv, "installing the aarch64 client packages failed", venv.env)


def main() -> int:
    """``python -m lpfl.android_harness.arm_rootfs``: build (or find) the cached root."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    root = ensure_rootfs()
    stamp = Stamp.read(root)
    print(f"{root} ready (built in {stamp.build_seconds if stamp else '?'} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
