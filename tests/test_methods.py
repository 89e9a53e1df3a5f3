"""The method table: what each method trains and which one it is compared with."""

from __future__ import annotations

import pytest

from lpfl.methods import METHODS, Trains, lookup


def test_every_method_without_soft_labels_has_its_counterpart() -> None:
    pairs = {m: row.name for m in METHODS if (row := lookup(m).soft_counterpart()) is not None}
    assert pairs == {"lp-fl-no-soft": "lp-fl", "fp-fl-no-soft": "fp-fl",
                     "centralized-no-soft": "centralized"}


def test_rows_say_what_each_method_does() -> None:
    assert lookup("fp-fl").trains is Trains.FULL and lookup("fp-fl").federated
    assert lookup("centralized").centralized and not lookup("centralized").federated
    assert not lookup("zero-shot").federated and lookup("zero-shot").trains is Trains.NOTHING
    assert [m for m in METHODS if lookup(m).soft] == ["lp-fl", "fp-fl", "centralized"]
    with pytest.raises(ValueError, match="unknown method 'fedprox'"):
        lookup("fedprox")
