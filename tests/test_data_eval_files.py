"""data.test_file / data.validation_file replace the carved splits; small datasets shrink them."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pytest

from lpfl.config import DataSettings
from lpfl.data import Example, build_federated_data, load_corpus
from lpfl.data.federated import carved_sizes
from lpfl.data.toy import write_toy_csv
from lpfl.errors import ConfigError, DataError
from lpfl.simulate import federated_data
from tests.conftest import tiny_config


def _examples(n: int, domain: str = "train") -> list[Example]:
    return [Example(f"{domain} {i}", i % 2, domain) for i in range(n)]


def test_given_splits_are_used_as_they_are_and_nothing_is_carved() -> None:
    settings = DataSettings(test_size=50, validation_size=40, shots_per_class=5,
                            unlabeled_per_client=20, num_clients=2)
    examples, test, validation = _examples(50), _examples(7, "test"), _examples(3, "validation")
    data = build_federated_data(settings, examples, 2, 0, test=test, validation=validation)
    assert data.test == tuple(test) and data.validation == tuple(validation)
    # 10 labeled + 40 unlabeled: the whole file trains, test_size and validation_size carve nothing.
    assert Counter([*data.all_labeled(), *data.all_unlabeled()]) == Counter(examples)


def test_a_test_file_alone_leaves_the_validation_split_carved() -> None:
    settings = DataSettings(test_size=1000, validation_size=20, shots_per_class=5,
                            unlabeled_per_client=10, num_clients=2, test_limit=2,
                            test_file="t.csv")
    data = build_federated_data(settings, _examples(60), 2, 0, test=_examples(7, "test"))
    assert data.test == tuple(_examples(2, "test"))  # test_limit still applies
    assert len(data.validation) == 20 and all(e.domain == "train" for e in data.validation)


def test_federated_data_reads_both_files_with_label_names(tmp_path: Path) -> None:
    toy = write_toy_csv(tmp_path / "toy.csv", n=60)
    test = tmp_path / "held_out.csv"
    test.write_text("text,label\ngood fun,positive\nbad mess,0\nfine,1\n", encoding="utf-8")
    validation = tmp_path / "validation.jsonl"
    validation.write_text('{"text": "awful", "label": "negative"}\n', encoding="utf-8")
    config = tiny_config(str(toy), data={"test_file": str(test),
                                         "validation_file": str(validation),
                                         "label_names": ["negative", "positive"]})
    data = federated_data(config, seed=0)
    assert [(e.text, e.label) for e in data.test] == [("good fun", 1), ("bad mess", 0),
                                                      ("fine", 1)]
    assert [(e.text, e.label) for e in data.validation] == [("awful", 0)]
    assert len(data.all_labeled()) + len(data.all_unlabeled()) == 16 + 32


@pytest.mark.parametrize(("content", "problem"), [
    (None, r"data\.test_file='.*missing\.csv': no such file; check the path"),
    ("text,class\nok,1\n", r"data\.test_file: .*held_out\.csv, line 1: missing column 'label'"),
    ("text,label\nok,postive\n", r"data\.test_file: .*held_out\.csv, line 2: label 'postive' is "
                                 r"not a class index nor one of data\.label_names"),
    ("text,label\nok,1\nno label,\n", r"data\.test_file: .*held_out\.csv, line 3: empty label"),
])
def test_a_bad_test_file_is_a_config_error_naming_key_file_and_fix(
        tmp_path: Path, content: str | None, problem: str) -> None:
    toy = write_toy_csv(tmp_path / "toy.csv", n=200)
    path = tmp_path / ("missing.csv" if content is None else "held_out.csv")
    if content is not None:
        path.write_text(content, encoding="utf-8")
    config = tiny_config(str(toy), data={"test_file": str(path),
                                         "label_names": ["negative", "positive"]})
    with pytest.raises(ConfigError, match=problem):
        federated_data(config, seed=0)


def test_an_unreadable_file_type_is_refused_with_the_config() -> None:
    with pytest.raises(ConfigError, match=r"data\.validation_file='dev\.txt': use a \.csv"):
        DataSettings(validation_file="dev.txt")


def test_a_file_too_small_for_test_size_shrinks_the_carved_splits(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # 80 rows, test_size 100: test takes 20 % (16), validation 10 % (8), 16 + 32 of the rest train.
    config = tiny_config(str(write_toy_csv(tmp_path / "small.csv", n=80)),
                         data={"validation_size": 10})
    with caplog.at_level(logging.WARNING, logger="lpfl.data.federated"):
        data = federated_data(config, seed=0)
    assert (len(data.test), len(data.validation)) == (16, 8)
    assert len(data.all_labeled()) == 16 and len(data.all_unlabeled()) == 32
    assert "small.csv' has 80 examples" in caplog.text
    assert "test split of 16 (at most 20% of the data)" in caplog.text
    assert "validation split of 8 (at most 10%)" in caplog.text


def test_a_file_still_too_small_says_which_number_to_set(tmp_path: Path) -> None:
    # 50 rows: test 10, pool 40, 16 labeled leave 24 unlabeled texts for 2 clients.
    config = tiny_config(str(write_toy_csv(tmp_path / "small.csv", n=50)))
    with pytest.raises(DataError, match=r"24 unlabeled texts left but 32 are needed; set "
                                        r"data\.unlabeled_per_client to at most 12"):
        federated_data(config, seed=0)


def test_a_run_that_fits_is_never_changed(caplog: pytest.LogCaptureFixture) -> None:
    settings = DataSettings()
    with caplog.at_level(logging.WARNING, logger="lpfl.data.federated"):
        assert carved_sizes(settings, len(load_corpus("mr")), 2) == (1000, 200)
        assert carved_sizes(settings, 1000 + 200 + 32 + 800, 2) == (1000, 200)
        assert carved_sizes(settings, 1000 + 200 + 32 + 800 - 1, 2) == (406, 200)
        assert carved_sizes(settings, 100, 2, test_file=True, validation_file=True) == (0, 0)
    assert caplog.text.count("carving a test split") == 1
