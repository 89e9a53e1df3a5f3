"""User files load when well-formed; every malformed one fails with the file, line and problem.
Labels may be class names; a device's file may leave labels empty."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lpfl.data import (
    UNLABELED,
    Example,
    Labels,
    Row,
    load_device_file,
    load_user_file,
    read_rows,
)
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


NAMES = ("negative", "positive")


def test_labels_may_be_class_names_or_indices(tmp_path: Path) -> None:
    path = _write(tmp_path, "named.csv", CSV_HEADER + "bad,negative\ngood, positive \nok,1\n")
    assert [e.label for e in load_user_file(path, 2, NAMES)] == [0, 1, 1]
    jsonl = _write(tmp_path, "named.jsonl", '{"text": "x", "label": "positive"}\n'
                                            '{"text": "y", "label": 0}\n')
    assert [e.label for e in load_user_file(jsonl, 2, NAMES)] == [1, 0]


@pytest.mark.parametrize(("name", "content", "line", "problem"), [
    ("typo.csv", CSV_HEADER + "ok,positive\nbad,postive\n", 3,
     "label 'postive' is not a class index nor one of data.label_names ('negative', "
     "'positive'); fix the row or add its name to data.label_names"),
    ("empty.csv", CSV_HEADER + "ok,positive\nbad,\n", 3, "empty label"),
    ("null.jsonl", '{"text": "x", "label": null}\n', 1, "empty label"),
])
def test_a_corpus_refuses_unknown_names_and_empty_labels(tmp_path: Path, name: str, content: str,
                                                         line: int, problem: str) -> None:
    path = _write(tmp_path, name, content)
    with pytest.raises(DataError) as caught:
        load_user_file(path, 2, NAMES)
    assert str(caught.value).startswith(f"{path}, line {line}: ")
    assert problem in str(caught.value)


def test_without_label_names_a_word_label_says_how_to_name_classes(tmp_path: Path) -> None:
    path = _write(tmp_path, "words.csv", CSV_HEADER + "ok,positive\n")
    with pytest.raises(DataError, match=r"line 2: .* data\.label_names = \[\.\.\.\]"):
        load_user_file(path, 2)


def test_a_device_file_splits_labeled_and_unlabeled_rows(tmp_path: Path) -> None:
    path = _write(tmp_path, "phone.csv", CSV_HEADER + "good film,positive\nmeh,\n"
                  "awful,0\n  so so  ,  \n")
    labeled, unlabeled = load_device_file(path, 2, NAMES)
    assert labeled == [Example("good film", 1, "phone"), Example("awful", 0, "phone")]
    assert unlabeled == [Example("meh", UNLABELED, "phone"), Example("  so so  ", UNLABELED,
                                                                     "phone")]
    jsonl = _write(tmp_path, "phone.jsonl", '{"text": "a", "label": "negative"}\n'
                   '{"text": "b"}\n{"text": "c", "label": null}\n{"text": "d", "label": ""}\n')
    labeled, unlabeled = load_device_file(jsonl, 2, NAMES)
    assert [e.text for e in labeled] == ["a"]
    assert [e.text for e in unlabeled] == ["b", "c", "d"]


def test_a_device_file_without_labeled_rows_says_what_to_do(tmp_path: Path) -> None:
    path = _write(tmp_path, "none.csv", CSV_HEADER + "a,\nb,\n")
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}: no labeled rows "
                       r"\(2 rows, every label empty\); label a few rows of each class"):
        load_device_file(path, 2)


def test_a_device_file_still_checks_its_labels_and_columns(tmp_path: Path) -> None:
    path = _write(tmp_path, "bad.csv", CSV_HEADER + "a,positive\nb,neutral\n")
    with pytest.raises(DataError, match="line 3: label 'neutral' is not a class index"):
        load_device_file(path, 2, NAMES)
    no_label = _write(tmp_path, "nolabel.csv", "text\na\n")
    with pytest.raises(DataError, match="line 1: missing column 'label'"):
        load_device_file(no_label, 2)


def test_rows_to_predict_need_only_a_text_column(tmp_path: Path) -> None:
    path = _write(tmp_path, "texts.csv", "id,text\n7,first\n\n8,second\n")
    assert read_rows(path, 2, labels=Labels.IGNORED) == [Row(2, "first", None),
                                                         Row(4, "second", None)]
    with pytest.raises(DataError, match="missing column 'text'"):
        read_rows(_write(tmp_path, "x.csv", "body\nhello\n"), 2, labels=Labels.IGNORED)
