"""``results.json``: one layout for every command, written as results come, so nothing finished
is lost.

Every results file is ``{"schema": 1, "config": {...}, "runs": [run, ...]}`` (plus, from the
aggregator, its ``server`` settings). A run is ``{"method", "seed", "final_accuracy",
"provenance", ..., "rounds": [...], "records": [...]}``: ``rounds`` holds each round's
:meth:`~lpfl.records.RoundRecord.summary` (one flat row with the same metric names everywhere:
what reports and tables read), ``records`` each round's full
:meth:`~lpfl.records.RoundRecord.to_dict` (every client's outcome, traffic and capabilities).
``lpfl simulate``, the benchmarks and the Flower app write many runs through
:class:`ResultsFile`; the aggregator (``lpfl server``, ``lpfl launch``, ``lpfl field``) writes
its one run through :class:`JsonResultsWriter`, rewritten after every round.
:func:`read_document` reads either (and the older aggregator layout, ``{"meta": ...,
"rounds": [...]}``); :func:`read_records` gives the round records of a one-run file.

A :class:`ResultsFile` rerun can ask :meth:`ResultsFile.has` and skip runs that are already
there, and several processes may append to one file (a benchmark split over processes): each
append takes a lock, re-reads the file and adds its run to what is there.

Every run carries where it came from (:func:`lpfl.provenance.provenance`: lpfl's version and git
commit, the command line, start and end times, library versions, the machine) in its
``provenance``. ``lpfl compare`` reads any results file.

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

SCHEMA = 1
"""The version of the results layout, stored in every file."""


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
            return list(read_document(self.path)["runs"])
        except (LpflError, KeyError, TypeError) as exc:
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
            write_json_atomic(self.path, {"schema": SCHEMA, "config": self.config,
                                          "runs": self.runs})


class ResultsWriter(Protocol):
    """Receives the aggregator's whole history after every round; must be idempotent (it is
    called again with the same rounds after a resume)."""

    def write(self, rounds: Sequence[RoundRecord]) -> None: ...


def run_entry(method: str, seed: int, records: Sequence[RoundRecord], wire: bool = False,
              **fields: Any) -> dict[str, Any]:
    """One run of a results file: its rounds as summary rows (``wire``: with the bytes on the
    wire) and as full records, the last evaluated accuracy as ``final_accuracy``, and
    ``fields`` (settings of the run, its provenance)."""
    rows = [r.summary(wire=wire) for r in records]
    final = next((row["accuracy"] for row in reversed(rows) if row["accuracy"] is not None),
                 None)
    return {"method": method, "seed": seed, "final_accuracy": final, **fields, "rounds": rows,
            "records": [r.to_dict() for r in records]}


class JsonResultsWriter:
    """Writes the aggregator's one run to a results file, atomically, after each round.

    ``meta`` is what the caller keeps beside the run: its ``config`` (a run config's dict,
    whose first method and seed name the run) goes to the file's ``config``, anything else
    (the server settings, say) to the top level. The run has the ``provenance`` of the writer
    (started when it was made, finished at this write).
    """

    def __init__(self, path: str | Path, meta: Mapping[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.meta = dict(meta or {})
        self.started = now()

    def write(self, rounds: Sequence[RoundRecord]) -> None:
        config = dict(self.meta.get("config") or {})
        extra = {k: v for k, v in self.meta.items() if k != "config"}
        entry = run_entry(*_served(config), rounds, wire=True,
                          provenance=provenance(self.started))
        write_json_atomic(self.path, {"schema": SCHEMA, "config": config, **extra,
                                      "runs": [entry]})


def _served(config: Mapping[str, Any]) -> tuple[str, int]:
    """The method and seed an aggregator runs: the first of each in its run config."""
    run = config.get("run") or {}
    return str((run.get("methods") or ["federated"])[0]), int((run.get("seeds") or [0])[0])


def read_document(path: Path) -> dict[str, Any]:
    """A results file in the current layout; the older aggregator layout (``{"meta": ...,
    "rounds": [records]}``) is converted. An LpflError if ``path`` is not lpfl results."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise LpflError(f"{path}: cannot read lpfl results ({exc})") from None
    if isinstance(document, dict) and isinstance(document.get("runs"), list):
        return document
    if isinstance(document, dict) and isinstance(document.get("rounds"), list):
        meta = dict(document.get("meta") or {})
        config = dict(meta.pop("config", None) or {})
        records = [RoundRecord.from_dict(r) for r in document["rounds"]]
        entry = run_entry(*_served(config), records, wire=True,
                          provenance=meta.pop("provenance", None))
        return {"schema": SCHEMA, "config": config, **meta, "runs": [entry]}
    raise LpflError(f"{path} is not an lpfl results file (no 'runs')")


def read_records(path: Path) -> list[RoundRecord]:
    """The round records of a results file that holds one run (an aggregator's)."""
    runs = read_document(path)["runs"]
    if len(runs) != 1:
        raise LpflError(f"{path} holds {len(runs)} runs, not the one run of an aggregator")
    return [RoundRecord.from_dict(r) for r in runs[0].get("records", [])]


def differences(old: Any, new: Any, where: str = "") -> list[str]:
    """Dotted paths where two JSON-like values differ, with both values."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        found = []
        for key in sorted(set(old) | set(new), key=str):
            path = f"{where}.{key}" if where else str(key)
            found += differences(old.get(key), new.get(key), path)
        return found
    return [] if old == new else [f"{where or 'config'}: {old!r} then, {new!r} now"]
