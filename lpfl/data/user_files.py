"""Load a user's own texts from a ``.csv`` or ``.jsonl`` file.

A CSV file has a header row with (at least) the columns ``text`` and ``label``; a JSONL file has
one object per line with the keys ``text`` and ``label``. A label is a class index
``0..num_classes-1``, written as a number (or, in either format, a string of digits), or one of
the run's class names (``data.label_names``). Blank lines are skipped. Every problem is a
:class:`~lpfl.errors.DataError` that names the file, the 1-based line and what is wrong, so a
user can fix the file without reading a traceback.

Three readers share the format: :func:`load_user_file` (a corpus: every row labeled),
:func:`load_device_file` (a device's own file: a row with an empty label is unlabeled) and
:func:`read_rows` with :attr:`Labels.IGNORED` (texts to predict; a label column is optional).
"""

from __future__ import annotations

import csv
import enum
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from lpfl.data.examples import UNLABELED, Example
from lpfl.errors import DataError

SUFFIXES = (".csv", ".jsonl")
"""The file types the readers read."""

Record = tuple[int, Mapping[str, object]]
"""A record and the 1-based line it starts on."""


class Labels(enum.Enum):
    """What :func:`read_rows` demands of the ``label`` column."""

    REQUIRED = "required"
    """Every row has a label (a corpus, an evaluation file)."""
    OPTIONAL = "optional"
    """A row with an empty label (or, in JSONL, none) is unlabeled (a device's own file)."""
    IGNORED = "ignored"
    """Only the texts are read; the column may be absent (texts to predict)."""


@dataclass(frozen=True)
class Row:
    """One row of a user file: its 1-based line, its text and its class (None: unlabeled)."""

    line: int
    text: str
    label: int | None


def read_rows(path: str | Path, num_classes: int, label_names: Sequence[str] = (),
              labels: Labels = Labels.REQUIRED) -> list[Row]:
    """Every row of a ``.csv`` or ``.jsonl`` file, its label read as ``labels`` says.

    A label is a class index or one of ``label_names`` (class ``i`` is ``label_names[i]``).
    """
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{file}: unsupported file type {suffix or '(no suffix)'!r}; "
                        "use a .csv file with a header row or a .jsonl file")
    text = _read_utf8(file)
    needs = ("text",) if labels is Labels.IGNORED else ("text", "label")
    records = _csv_rows(file, text, needs) if suffix == ".csv" else _jsonl_rows(file, text)
    if not records:
        raise DataError(f"{file}: no rows; add one text per line")
    return [_row(file, line, record, num_classes, tuple(label_names), labels)
            for line, record in records]


def load_user_file(path: str | Path, num_classes: int,
                   label_names: Sequence[str] = ()) -> list[Example]:
    """Read every row of a ``.csv`` or ``.jsonl`` file as a labeled :class:`Example`.

    The domain of each example is the file's stem, so one file is one domain.
    """
    file = Path(path)
    rows = read_rows(file, num_classes, label_names, Labels.REQUIRED)
    return [Example(r.text, UNLABELED if r.label is None else r.label, file.stem) for r in rows]


def load_device_file(path: str | Path, num_classes: int, label_names: Sequence[str] = ()
                     ) -> tuple[list[Example], list[Example]]:
    """A device's own file as (labeled, unlabeled) examples; a row with an empty label is
    unlabeled (its ``label`` is :data:`~lpfl.data.examples.UNLABELED`). A file without a single
    labeled row is a :class:`DataError`: a client trains on its labeled rows."""
    file = Path(path)
    rows = read_rows(file, num_classes, label_names, Labels.OPTIONAL)
    labeled = [Example(r.text, r.label, file.stem) for r in rows if r.label is not None]
    unlabeled = [Example(r.text, UNLABELED, file.stem) for r in rows if r.label is None]
    if not labeled:
        raise DataError(f"{file}: no labeled rows ({len(rows)} rows, every label empty); label "
                        "a few rows of each class: the client trains on its labeled rows and "
                        "soft-labels the others")
    return labeled, unlabeled


def _read_utf8(file: Path) -> str:
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{file}: no such file") from None
    except OSError as exc:
        raise DataError(f"{file}: cannot read it ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{file}, line {line}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at "
                        f"byte offset {exc.start}); save the file as UTF-8") from None
    return text.removeprefix("\ufeff")


def _csv_rows(file: Path, text: str, needs: Sequence[str]) -> list[Record]:
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[Record] = []
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{file}: the file is empty; it needs a header row with "
                            "'text' and 'label' and one row per example")
        columns = [name.strip() for name in header]
        for name in needs:
            if name not in columns:
                raise DataError(f"{file}, line 1: missing column {name!r} "
                                f"(the header has {', '.join(map(repr, columns))})")
        line = reader.line_num + 1
        for fields in reader:
            if fields:
                if len(fields) != len(columns):
                    raise DataError(f"{file}, line {line}: {len(fields)} fields but the header "
                                    f"has {len(columns)}; quote texts that contain commas")
                rows.append((line, dict(zip(columns, fields, strict=True))))
            line = reader.line_num + 1
    except csv.Error as exc:
        raise DataError(f"{file}, line {reader.line_num}: not valid CSV ({exc})") from None
    return rows


def _jsonl_rows(file: Path, text: str) -> list[Record]:
    rows: list[Record] = []
    for line, content in enumerate(text.split("\n"), start=1):
        if not content.strip():
            continue
        try:
            record = json.loads(content)
        except json.JSONDecodeError as exc:
            raise DataError(f"{file}, line {line}: not valid JSON ({exc.msg} at column "
                            f"{exc.colno})") from None
        if not isinstance(record, dict):
            raise DataError(f"{file}, line {line}: expected a JSON object with \"text\" and "
                            f"\"label\", got {type(record).__name__}")
        rows.append((line, record))
    return rows


def _row(file: Path, line: int, record: Mapping[str, object], num_classes: int,
         names: tuple[str, ...], labels: Labels) -> Row:
    where = f"{file}, line {line}"
    if "text" not in record:
        raise DataError(f"{where}: missing 'text'")
    text = record["text"]
    if not isinstance(text, str):
        raise DataError(f"{where}: 'text' must be a string, got {text!r}")
    if not text.strip():
        raise DataError(f"{where}: empty text")
    if labels is Labels.IGNORED:
        return Row(line, text, None)
    if "label" not in record and labels is Labels.REQUIRED:
        raise DataError(f"{where}: missing 'label'")
    value = record.get("label")
    if value is None or (isinstance(value, str) and not value.strip()):
        if labels is Labels.OPTIONAL:
            return Row(line, text, None)
        raise DataError(f"{where}: empty label; every row of this file needs one (a class "
                        f"index 0..{num_classes - 1}{' or name' if names else ''})")
    return Row(line, text, _label(where, value, num_classes, names))


def _label(where: str, value: object, num_classes: int, names: tuple[str, ...]) -> int:
    if isinstance(value, str) and value.strip() in names:
        return names.index(value.strip())
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        index = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        index = value
    elif names:
        raise DataError(f"{where}: label {value!r} is not a class index nor one of "
                        f"data.label_names ({', '.join(map(repr, names))}); fix the row or add "
                        "its name to data.label_names in the run file (one per label word)")
    else:
        raise DataError(f"{where}: label {value!r} is not a class index; use an integer from "
                        f"0 to {num_classes - 1}, or name the classes in the run file with "
                        "data.label_names = [...] (one name per prompt.label_words entry)")
    if not 0 <= index < num_classes:
        raise DataError(f"{where}: label {index} is out of range; use 0 to {num_classes - 1} "
                        "(one class per prompt.label_words entry)")
    return index
