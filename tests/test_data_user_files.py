"""User files load when well-formed; every malformed one fails with the file, line and problem."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lpfl.data import Example, load_user_file
from lpfl.errors import DataError


def _write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8", newline="")
    else:
        path.write_bytes(content)
    return path


def test_good_csv_with_extra_columns_quotes_crlf_and_bom(tmp_path: Path) -> None:
    path = _write(tmp_path, "reviews.csv",
                  '\ufeffid,text,label,source\r\n'
                  '1,"Great, really great",1,web\r\n'
                  '\r\n'
                  '2,"two\nlines",0,web\r\n'
                  '3,fine, 2 ,web\r\n')
    assert load_user_file(path, num_classes=3) == [
        Example("Great, really great", 1, "reviews"),
        Example("two\nlines", 0, "reviews"),
        Example("fine", 2, "reviews"),
    ]


def test_good_jsonl_with_blank_lines_and_extra_keys(tmp_path: Path) -> None:
    path = _write(tmp_path, "posts.jsonl",
                  '{"text": "bad \u2028 day", "label": 0, "id": 7}\n\n'
                  '{"label": "1", "text": "good"}\r\n')
    assert load_user_file(str(path), num_classes=2) == [
        Example("bad \u2028 day", 0, "posts"),
        Example("good", 1, "posts"),
    ]


CSV_HEADER = "text,label\n"
JSONL_GOOD = '{"text": "ok", "label": 1}\n'

ERROR_CASES = [
    ("no_text.csv", "txt,label\nhello,1\n", 1, "missing column 'text'"),
    ("no_label.csv", "text\nhello\n", 1, "missing column 'label'"),
    ("empty_text.csv", CSV_HEADER + "ok,1\n  ,0\n", 3, "empty text"),
    ("word_label.csv", CSV_HEADER + "ok,1\n\nbad,positive\n", 4, "'positive' is not a class"),
    ("range.csv", CSV_HEADER + "ok,1\nbad,2\n", 3, "label 2 is out of range"),
    ("negative.csv", CSV_HEADER + "bad,-1\n", 2, "not a class index"),
    ("fields.csv", CSV_HEADER + '"multi\nline",1\nbad, comma,0\n', 4, "3 fields"),
    ("broken.jsonl", JSONL_GOOD + '{"text": "x", "label": 1\n', 2, "not valid JSON"),
    ("array.jsonl", JSONL_GOOD * 2 + '["x", 1]\n', 3, "expected a JSON object"),
    ("nolabel.jsonl", JSONL_GOOD + '\n{"text": "x"}\n', 3, "missing 'label'"),
    ("notext.jsonl", '{"label": 0}\n', 1, "missing 'text'"),
    ("float.jsonl", JSONL_GOOD + '{"text": "x", "label": 1.0}\n', 2, "not a class index"),
    ("bool.jsonl", '{"text": "x", "label": true}\n', 1, "not a class index"),
    ("number.jsonl", '{"text": 5, "label": 0}\n', 1, "'text' must be a string"),
]


@pytest.mark.parametrize(("name", "content", "line", "problem"), ERROR_CASES)
def test_malformed_rows_name_file_line_and_problem(tmp_path: Path, name: str, content: str,
                                                   line: int, problem: str) -> None:
    path = _write(tmp_path, name, content)
    with pytest.raises(DataError) as caught:
        load_user_file(path, num_classes=2)
    message = str(caught.value)
    assert message.startswith(f"{path}, line {line}: ")
    assert problem in message


def test_bad_encoding_names_line_and_byte_offset(tmp_path: Path) -> None:
    content = (CSV_HEADER + "caf\u00e9,1\n").encode() + "na\u00efve,0\n".encode("latin-1")
    path = _write(tmp_path, "latin.csv", content)
    with pytest.raises(DataError) as caught:
        load_user_file(path, num_classes=2)
    offset = content.index(b"\xefve")
    assert f"{path}, line 3: not valid UTF-8 (byte 0xef at byte offset {offset})" in str(
        caught.value)


@pytest.mark.parametrize(("name", "content", "problem"), [
    ("empty.csv", "", "the file is empty"),
    ("header_only.csv", CSV_HEADER, "no rows"),
    ("blank.jsonl", "\n \n", "no rows"),
    ("data.txt", "text,label\nx,1\n", "unsupported file type '.txt'"),
])
def test_unusable_files_name_the_file_and_problem(tmp_path: Path, name: str, content: str,
                                                  problem: str) -> None:
    path = _write(tmp_path, name, content)
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}: .*{re.escape(problem)}"):
        load_user_file(path, num_classes=2)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.jsonl"
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}: no such file"):
        load_user_file(path, num_classes=2)
