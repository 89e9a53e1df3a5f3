"""Load a user's own labeled texts from a ``.csv`` or ``.jsonl`` file.

A CSV file has a header row with (at least) the columns ``text`` and ``label``; a JSONL file has
one object per line with the keys ``text`` and ``label``. A label is a class index
``0..num_classes-1``, written as a number (or, in either format, a string of digits). Blank lines
are skipped. Every problem is a :class:`~lpfl.errors.DataError` that names the file, the 1-based
line and what is wrong, so a user can fix the file without reading a traceback.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from pathlib import Path

from lpfl.data.examples import Example
from lpfl.errors import DataError

SUFFIXES = (".csv", ".jsonl")
"""The file types :func:`load_user_file` reads."""

_FIELDS = ("text", "label")

Row = tuple[int, Mapping[str, object]]
"""A record and the 1-based line it starts on."""


def load_user_file(path: str | Path, num_classes: int) -> list[Example]:
    """Read every row of a ``.csv`` or ``.jsonl`` file as an :class:`Example`.

    The domain of each example is the file's stem, so one file is one domain.
    """
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{file}: unsupported file type {suffix or '(no suffix)'!r}; "
                        "use a .csv file with a header row or a .jsonl file")
    text = _read_utf8(file)
    rows = _csv_rows(file, text) if suffix == ".csv" else _jsonl_rows(file, text)
    if not rows:
        raise DataError(f"{file}: no rows; add one labeled text per line")
    return [_example(file, line, record, num_classes) for line, record in rows]


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


def _csv_rows(file: Path, text: str) -> list[Row]:
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[Row] = []
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{file}: the file is empty; it needs a header row with "
                            "'text' and 'label' and one row per example")
        columns = [name.strip() for name in header]
        for name in _FIELDS:
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


def _jsonl_rows(file: Path, text: str) -> list[Row]:
    rows: list[Row] = []
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


def _example(file: Path, line: int, record: Mapping[str, object], num_classes: int) -> Example:
    where = f"{file}, line {line}"
    for name in _FIELDS:
        if name not in record:
            raise DataError(f"{where}: missing {name!r}")
    text = record["text"]
    if not isinstance(text, str):
        raise DataError(f"{where}: 'text' must be a string, got {text!r}")
    if not text.strip():
        raise DataError(f"{where}: empty text")
    return Example(text=text, label=_label(where, record["label"], num_classes), domain=file.stem)


def _label(where: str, value: object, num_classes: int) -> int:
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        index = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        index = value
    else:
        raise DataError(f"{where}: label {value!r} is not a class index; "
                        f"use an integer from 0 to {num_classes - 1}")
    if not 0 <= index < num_classes:
        raise DataError(f"{where}: label {index} is out of range; use 0 to {num_classes - 1} "
                        "(one class per prompt.label_words entry)")
    return index
