"""Batch plans (uniform draws, or a fixed share of labeled examples in every batch) and the
language-model loss trained alongside."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lpfl.config import LoraSettings, ModelSettings, PromptSettings
from lpfl.model.adapters import load_trainable_state, set_mode, trainable_state
from lpfl.model.loading import load_base_model
from lpfl.model.prompt import PromptModel
from lpfl.training import (
    LmBatches,
    TrainExample,
    batch_plan,
    gold_fraction,
    hard_example,
    shuffled_batches,
    train_steps,
)


def pool(gold: int, soft: int) -> list[TrainExample]:
    return ([hard_example(f"gold {i}", i % 2, 2) for i in range(gold)]
            + [TrainExample(f"soft {i}", (0.2, 0.8), soft=True) for i in range(soft)])


def test_uniform_plan_cycles_through_shuffles_of_everything() -> None:
    examples = pool(6, 4)
    plan = batch_plan(examples, 5, 4, 0.0, np.random.default_rng(0))
    assert [len(b) for b in plan] == [4, 4, 2, 4, 4]  # an epoch of 10 ends with a short batch
    assert sorted(plan[0] + plan[1] + plan[2]) == list(range(10))
    assert plan == batch_plan(examples, 5, 4, 0.0, np.random.default_rng(0))
    # drawn in proportion to their numbers: 160 soft labels swamp 8 gold examples
    swamped = pool(8, 160)
    plan = batch_plan(swamped, 21, 8, 0.0, np.random.default_rng(1))
    assert gold_fraction(swamped, plan) == pytest.approx(8 / 168)


@pytest.mark.parametrize("share", [0.25, 0.5, 0.8, 1.0])
def test_gold_share_holds_in_every_batch_whatever_the_number_of_soft_labels(share: float) -> None:
    for soft in (4, 40, 400):
        examples = pool(8, soft)
        plan = batch_plan(examples, 12, 8, share, np.random.default_rng(soft))
        per_batch = math.ceil(share * 8)
        for batch in plan:
            assert len(batch) == 8
            assert sum(not examples[i].soft for i in batch) == per_batch
        assert gold_fraction(examples, plan) == per_batch / 8
        gold_seen = [i for b in plan for i in b if not examples[i].soft]
        assert set(gold_seen[:8]) == set(range(8))  # gold cycles through whole shuffles


def test_gold_share_needs_both_kinds_and_a_valid_share() -> None:
    only_gold = pool(6, 0)
    assert batch_plan(only_gold, 3, 4, 0.5, np.random.default_rng(0)) == batch_plan(
        only_gold, 3, 4, 0.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="gold_share"):
        batch_plan(only_gold, 3, 4, 1.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="no training examples"):
        batch_plan([], 3, 4, 0.5, np.random.default_rng(0))


def test_lm_batches_train_the_language_model_loss_alongside() -> None:
    torch.manual_seed(0)
    base = load_base_model(ModelSettings(source="tiny-llama"))
    pm = PromptModel(base, PromptSettings(), 48)
    set_mode(pm, "lora", LoraSettings(r=4))
    start = trainable_state(pm)
    examples = pool(4, 0)
    texts = tuple(f"an unlabeled review number {i} , quite long and wordy" for i in range(6))
    plan = batch_plan(examples, 6, 2, 0.0, np.random.default_rng(0))
    lm = LmBatches(texts, tuple(tuple(b) for b in shuffled_batches(6, 6, 3,
                                                                    np.random.default_rng(1))),
                   weight=1.0)

    def lm_loss() -> float:
        with torch.no_grad():
            return float(pm.lm_loss(pm.encode(list(texts))))

    before = lm_loss()
    classification_only = train_steps(pm, examples, plan, 1e-2)
    without = lm_loss()
    load_trainable_state(pm, start)
    with_lm = train_steps(pm, examples, plan, 1e-2, lm=lm)
    assert lm_loss() < min(before, without) - 0.05
    # the reported loss is the classification loss: first step identical, then paths differ
    assert with_lm != pytest.approx(classification_only, abs=1e-6)
    with pytest.raises(ValueError, match="LM batches"):
        train_steps(pm, examples, plan[:3], 1e-2, lm=lm)
    with pytest.raises(ValueError, match="outside"):
        LmBatches(texts, ((0, 6),), 1.0)
    with pytest.raises(ValueError, match="weight"):
        LmBatches(texts, ((0,),), 0.0)


def test_shuffled_batches_draw_every_position_once_per_pass() -> None:
    plan = shuffled_batches(5, 4, 2, np.random.default_rng(3))
    assert [len(b) for b in plan] == [2, 2, 1, 2]
    assert sorted(plan[0] + plan[1] + plan[2]) == list(range(5))
    with pytest.raises(ValueError, match="nothing"):
        shuffled_batches(0, 1, 2, np.random.default_rng(0))
