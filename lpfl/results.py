"""``results.json``: written as results come, so nothing finished is lost.

Two writers, one per kind of output folder. The simulation and the benchmarks keep whole runs
(:class:`ResultsFile`): ``{"config": {...}, "runs": [ {...}, ... ]}``, each run with the
:meth:`~lpfl.records.RoundRecord.summary` of its rounds; a rerun can ask
:meth:`ResultsFile.has` and skip runs that are already there, and several processes may append
to one file (a benchmark split over processes): each append takes a lock, re-reads the file and
adds its run to what is there. The aggregator keeps the rounds of its one run in full
(:class:`JsonResultsWriter`): ``{"meta": {...}, "rounds": [ {...}, ... ]}``, each round a
:meth:`~lpfl.records.RoundRecord.to_dict`, rewritten after every round.

Both carry where the results came from (:func:`lpfl.provenance.provenance`: lpfl's version and
git commit, the command line, start and end times, library versions, the machine): each run of
a :class:`ResultsFile` in its ``provenance`` (started when the file was opened, finished when the
run was added), the aggregator's file in ``meta.provenance`` (finished at the last round).
``lpfl compare`` reads both kinds.

Every write goes to a temporary file that is fsynced and renamed over the old one, so a crash
leaves either the old or the new file, never a torn one.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from lpfl.errors import LpflError
from lpfl.provenance import now, provenance
from lpfl.records import RoundRecord


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file, never half
    of one: write a temporary file beside it, fsync, rename, fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def write_json_atomic(path: Path, payload: Any) -> None:
    """Replace ``path`` with ``payload`` as JSON, atomically (see :func:`write_atomically`)."""
    write_atomically(path, json.dumps(payload, indent=1).encode("utf-8"))


class ResultsFile:
    """The runs of one output directory; ``key`` fields tell runs apart for resuming."""

    def __init__(self, path: Path, config: Mapping[str, Any]) -> None:
        self.path = path
        self.config: dict[str, Any] = json.loads(json.dumps(config))  # as it will be stored
        self.runs: list[dict[str, Any]] = self._read()
        self.started = now()

    def _read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        try:
            return list(json.loads(self.path.read_text(encoding="utf-8"))["runs"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise LpflError(f"{self.path} exists but is not an lpfl results file ({exc}); "
                            "move it away or choose another --out") from None

    @staticmethod
    def load_config(path: Path) -> Any:
        """The config stored with the runs in ``path``."""
        return json.loads(path.read_text(encoding="utf-8")).get("config")

    def require_same_config(self, what: str = "config") -> None:
        """Refuse to add runs to a file whose stored config differs from this one: a resumed
        run must not mix results of another model, setting or environment. The error names the
        first differing keys."""
        if not self.path.is_file():
            return
        stored = self.load_config(self.path)
        if stored == self.config:
            return
        differing = differences(stored, self.config)
        shown = "; ".join(differing[:4]) + (" …" if len(differing) > 4 else "")
        raise LpflError(f"{self.path} holds runs made with a different {what} ({shown}); "
                        "choose another --out, or delete the file to start over")

    def reload(self) -> list[dict[str, Any]]:
        """Re-read the runs on disk (another process may have added some)."""
        self.runs = self._read()
        return self.runs

    def has(self, **key: Any) -> bool:
        return any(all(run.get(k) == v for k, v in key.items()) for run in self.runs)

    def add(self, run: Mapping[str, Any]) -> None:
        """Append ``run`` to the file (merging runs other processes added meanwhile), with its
        provenance unless it has one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = {"provenance": provenance(self.started), **run}
        with (self.path.parent / (self.path.name + ".lock")).open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.runs = [*self._read(), kept]
            write_json_atomic(self.path, {"config": self.config, "runs": self.runs})


class ResultsWriter(Protocol):
    """Receives the aggregator's whole history after every round; must be idempotent (it is
    called again with the same rounds after a resume)."""

    def write(self, rounds: Sequence[RoundRecord]) -> None: ...


class JsonResultsWriter:
    """Writes ``{"meta": ..., "rounds": [...]}`` to one JSON file, atomically, after each round.

    ``meta`` is whatever the caller wants beside the rounds (the run config, say), plus the
    ``provenance`` of the run (started when the writer was made, finished at this write).
    """

    def __init__(self, path: str | Path, meta: Mapping[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.meta = dict(meta or {})
        self.started = now()

    def write(self, rounds: Sequence[RoundRecord]) -> None:
        meta = {**self.meta, "provenance": provenance(self.started)}
        write_json_atomic(self.path, {"meta": meta, "rounds": [r.to_dict() for r in rounds]})


def differences(old: Any, new: Any, where: str = "") -> list[str]:
    """Dotted paths where two JSON-like values differ, with both values."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        found = []
        for key in sorted(set(old) | set(new), key=str):
            path = f"{where}.{key}" if where else str(key)
            found += differences(old.get(key), new.get(key), path)
        return found
    return [] if old == new else [f"{where or 'config'}: {old!r} then, {new!r} now"]
