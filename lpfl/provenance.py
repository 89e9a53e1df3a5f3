"""Where a result came from: lpfl's version and commit, the command, the times, the machine.

Every results file carries a ``provenance`` block (:func:`provenance`) so that two runs can be
told apart and compared (``lpfl compare``) without guessing: which code made them, with which
libraries, on which CPU or GPU, when, and from which command line. Library versions are read
from the installed distributions, never by importing them.
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from lpfl.artefact import installed_version
from lpfl.trainer_api import cpu_features, cpu_model

LIBRARIES = ("torch", "transformers", "peft", "safetensors", "websockets", "executorch",
             "onnxruntime", "flwr", "dp-accounting")
"""The libraries whose versions a result records (empty where not installed)."""


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


HERE = Path(__file__).resolve().parent


def git_commit(folder: Path = HERE) -> str:
    """The commit of the checkout lpfl runs from (with ``+dirty`` if it has uncommitted
    changes), or ``""`` when it is not a git checkout."""
    try:
        head = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], check=True,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        status = subprocess.run(["git", "-C", str(folder), "status", "--porcelain",
                                 "--untracked-files=no"], check=True, capture_output=True,
                                text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return head + ("+dirty" if status else "")


def _gpu() -> str:
    """The first CUDA device's name when torch is already loaded and sees one, else ``""``."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return ""
    return str(torch.cuda.get_device_name(0))


def provenance(started: str | None = None) -> dict[str, Any]:
    """The provenance block of a result made now (``started``: when the work began)."""
    return {
        "lpfl": installed_version("lpfl"),
        "git_commit": git_commit(),
        "command": shlex.join(sys.argv),
        "started": started or now(),
        "finished": now(),
        "python": platform.python_version(),
        "libraries": {name: installed_version(name) for name in LIBRARIES},
        "machine": {"arch": platform.machine(), "cpu": cpu_model(),
                    "cpu_features": cpu_features(), "cpu_count": os.cpu_count() or 0,
                    "gpu": _gpu()},
    }
