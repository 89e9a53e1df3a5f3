"""Soft-label rules on probability matrices: teacher, agreement, targets and selection."""

from __future__ import annotations

import pytest
import torch

from lpfl.config import SoftTarget
from lpfl.softlabels import (
    align_to_prior,
    members_agree,
    select_confident,
    soft_targets,
    teacher_log_probs,
)


def probs(rows: list[float]) -> torch.Tensor:
    p = torch.tensor(rows)
    return torch.stack([1 - p, p], dim=1)


def test_threshold_budget_and_balance() -> None:
    # p(positive) per row; confident positives: 0,1,2,3; confident negatives: 5,6
    p = probs([0.99, 0.95, 0.91, 0.97, 0.6, 0.02, 0.08, 0.5])
    assert select_confident(p, budget=100, threshold=0.9, balanced=False) == [0, 1, 2, 3, 5, 6]
    # balanced: at most budget // 2 per predicted class, most confident first
    assert select_confident(p, budget=4, threshold=0.9) == [0, 3, 5, 6]
    assert select_confident(p, budget=2, threshold=0.9) == [0, 5]
    assert select_confident(p, budget=3, threshold=0.9, balanced=False) == [0, 3, 5]
    assert select_confident(p, budget=0, threshold=0.9) == []
    assert select_confident(p, budget=10, threshold=0.999) == []


def test_balance_never_exceeds_quota_when_one_class_dominates() -> None:
    p = probs([0.99] * 20 + [0.01])
    chosen = select_confident(p, budget=10, threshold=0.9)
    predicted = p[chosen].argmax(1).tolist()
    assert predicted.count(1) == 5 and predicted.count(0) == 1


def test_eligible_rows_are_left_out_before_budget_and_balance() -> None:
    p = probs([0.99, 0.95, 0.91, 0.97, 0.6, 0.02, 0.08, 0.5])
    eligible = torch.tensor([False, True, True, True, True, True, False, True])
    assert select_confident(p, budget=4, threshold=0.9, eligible=eligible) == [1, 3, 5]
    with pytest.raises(ValueError, match="eligible"):
        select_confident(p, budget=4, threshold=0.9, eligible=eligible[:3])


def test_teacher_averages_member_log_probabilities() -> None:
    a = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[0.0, 0.0], [0.0, 3.0]])
    teacher = teacher_log_probs([a, b])
    expected = torch.log_softmax((torch.log_softmax(a, -1) + torch.log_softmax(b, -1)) / 2, -1)
    torch.testing.assert_close(teacher, expected)
    torch.testing.assert_close(teacher.exp().sum(-1), torch.ones(2))
    torch.testing.assert_close(teacher_log_probs([a]), torch.log_softmax(a, -1))
    with pytest.raises(ValueError, match="at least one"):
        teacher_log_probs([])


def test_members_agree_only_where_every_argmax_matches() -> None:
    a = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    b = torch.tensor([[1.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    c = torch.tensor([[5.0, 0.0], [0.0, 1.0], [0.0, 2.0]])
    assert members_agree([a, b]).tolist() == [True, False, True]
    assert members_agree([a, b, c]).tolist() == [True, False, False]
    assert members_agree([a]).all()


def test_targets_sharpen_with_temperature_or_take_the_argmax() -> None:
    teacher = torch.log_softmax(torch.tensor([[1.0, 0.0], [0.0, 0.5]]), -1)
    same = soft_targets(teacher, SoftTarget.DISTRIBUTION, 1.0)
    torch.testing.assert_close(same, teacher.exp())
    sharp = soft_targets(teacher, SoftTarget.DISTRIBUTION, 0.5)
    torch.testing.assert_close(sharp, torch.softmax(teacher * 2, -1))
    assert bool((sharp.max(-1).values > same.max(-1).values).all())
    hard = soft_targets(teacher, SoftTarget.ARGMAX, 1.0)
    assert hard.tolist() == [[1.0, 0.0], [0.0, 1.0]]


def test_alignment_matches_the_prior_and_keeps_the_order_within_a_class() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 2, generator=gen) + torch.tensor([0.0, 1.5])  # leans to class 1
    before = torch.log_softmax(logits, -1)
    assert before.exp().mean(0)[1] > 0.7
    prior = torch.tensor([0.5, 0.5])
    after = align_to_prior(before, prior)
    torch.testing.assert_close(after.exp().mean(0), prior, atol=1e-4, rtol=0)
    margin_before = before[:, 1] - before[:, 0]
    margin_after = after[:, 1] - after[:, 0]
    assert torch.equal(margin_before.argsort(), margin_after.argsort())
    skewed = align_to_prior(before, torch.tensor([0.8, 0.2]))
    torch.testing.assert_close(skewed.exp().mean(0), torch.tensor([0.8, 0.2]), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="prior"):
        align_to_prior(before, torch.tensor([1.0]))
