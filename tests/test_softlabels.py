import torch

from lpfl.softlabels import select_confident


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
