"""The packaged corpora parse to the published counts, and load_dataset picks the right loader."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from lpfl.config import DataSettings
from lpfl.data import CORPORA, load_corpus, load_dataset
from lpfl.errors import DataError


def test_mr_has_the_published_counts() -> None:
    labels = Counter(example.label for example in load_corpus("mr"))
    assert labels == {1: 5242, 0: 5326}
    assert sum(labels.values()) == 10568


@pytest.mark.parametrize("name", CORPORA)
def test_every_corpus_is_binary_nonempty_and_tagged_with_its_domain(name: str) -> None:
    examples = load_corpus(name)
    assert len(examples) > 1000
    assert {example.label for example in examples} == {0, 1}
    assert {example.domain for example in examples} == {name}
    assert all(example.text.strip() for example in examples)


def test_domains_is_all_four_concatenated_in_order() -> None:
    expected = [example for name in CORPORA for example in load_corpus(name)]
    assert load_corpus("domains") == expected


def test_texts_are_decoded_as_utf8() -> None:
    texts = [example.text for example in load_corpus("mr")]
    assert any("clichés" in text for text in texts)
    assert not any("Ã" in text for text in texts)


def test_callers_cannot_corrupt_the_cache() -> None:
    first = load_corpus("mr")
    first.clear()
    assert len(load_corpus("mr")) == 10568


def test_unknown_corpus_lists_the_known_names() -> None:
    with pytest.raises(DataError, match="mr, tweets, amazon, nyt, domains"):
        load_corpus("imdb")


def test_load_dataset_reads_a_corpus_or_a_user_file(tmp_path: Path) -> None:
    assert len(load_dataset(DataSettings(dataset="tweets"), num_classes=2)) == 4196
    path = tmp_path / "mine.jsonl"
    path.write_text('{"text": "a", "label": 2}\n', encoding="utf-8")
    [example] = load_dataset(DataSettings(dataset=str(path)), num_classes=3)
    assert (example.label, example.domain) == (2, "mine")


def test_load_dataset_rejects_a_corpus_with_the_wrong_number_of_classes() -> None:
    with pytest.raises(DataError, match="2 classes"):
        load_dataset(DataSettings(dataset="mr"), num_classes=3)


def test_load_dataset_reports_an_unsupported_file_type() -> None:
    with pytest.raises(DataError, match=r"data\.txt: unsupported file type '\.txt'"):
        load_dataset(DataSettings(dataset="data.txt"), num_classes=2)
