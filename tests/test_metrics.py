"""The one rule for combining client metrics, against numbers worked out by hand."""

import pytest

from lpfl.metrics import combine_client_metrics, is_count, pooled_rate


def test_counts_are_summed_and_everything_else_is_example_weighted() -> None:
    reports = [
        (2, {"train_loss": 1.0, "soft_labels_added": 3.0, "soft_label_correct": 2.0,
             "soft_label_checked": 3.0, "gold_share": 0.5}),
        (6, {"train_loss": 3.0, "soft_labels_added": 1.0, "soft_label_correct": 1.0,
             "soft_label_checked": 1.0, "gold_share": 1.0, "peak_rss_bytes": 100.0}),
    ]
    combined = combine_client_metrics(reports)
    assert combined == {
        "gold_share": pytest.approx((2 * 0.5 + 6 * 1.0) / 8),  # 0.875
        "peak_rss_bytes": 100.0,  # only the second client reports it: its weight alone
        "soft_label_checked": 4.0,
        "soft_label_correct": 3.0,
        "soft_labels_added": 4.0,
        "train_loss": pytest.approx((2 * 1.0 + 6 * 3.0) / 8),  # 2.5
    }
    assert list(combined) == sorted(combined)
    # The pooled rate of two counts: 3 of 4, not the mean of the clients' 2/3 and 1/1.
    assert pooled_rate(combined, "soft_label_correct", "soft_label_checked") == 0.75
    assert pooled_rate(combined, "teacher_pool_correct", "pool_checked") is None


def test_the_naming_rule_and_its_edges() -> None:
    assert all(is_count(n) for n in ("soft_labels_added", "pool_checked", "teacher_pool_correct"))
    assert not any(is_count(n) for n in ("train_loss", "gold_share", "compute_seconds"))
    assert combine_client_metrics([]) == {}
    with pytest.raises(ValueError, match="num_examples >= 1"):
        combine_client_metrics([(0, {"train_loss": 1.0})])
