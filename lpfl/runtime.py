"""A client's runtime: what scores its texts and what trains its adapter, as protocols.

The client round (:mod:`lpfl.client_round`) needs only a :class:`Scorer` and a
:class:`LocalTrainer`. :meth:`ClientRuntime.eager` runs both in PyTorch on a prompt model; an
edge client builds them from exported programs instead (``lpfl.backends``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from lpfl.model.adapters import load_trainable_state, trainable_state
from lpfl.model.prompt import PromptModel
from lpfl.training import LmBatches, TrainExample, train_steps


class Scorer(Protocol):
    """Class logits for texts under the current global adapter."""

    def load_state(self, state: Mapping[str, torch.Tensor]) -> None: ...

    def score(self, texts: Sequence[str], batch_size: int,
              pattern: str | None = None) -> torch.Tensor:
        """Class logits ``[len(texts), classes]``, under ``pattern`` (same label words) when
        given, else the run's pattern."""
        ...


class LocalTrainer(Protocol):
    """Trains the adapter locally: :func:`lpfl.training.train_steps` without the model argument."""

    def load_state(self, state: Mapping[str, torch.Tensor]) -> None: ...

    def train(self, examples: Sequence[TrainExample], plan: Sequence[Sequence[int]], lr: float,
              weight_decay: float, lm: LmBatches | None = None) -> float:
        """The mean classification loss; a trainer that cannot train the language-model loss
        raises a ConfigError when ``lm`` is given."""
        ...

    def state(self) -> dict[str, torch.Tensor]: ...


def score_members(scorer: Scorer, texts: Sequence[str], batch_size: int,
                  patterns: Sequence[str]) -> list[torch.Tensor]:
    """The soft-label teacher's members: class logits of ``texts`` under the run's own pattern,
    then under each of ``patterns`` (:func:`lpfl.softlabels.teacher_log_probs` averages them)."""
    return [scorer.score(texts, batch_size, pattern) for pattern in (None, *patterns)]


@dataclass
class EagerScorer:
    """Soft-labelling with the PyTorch prompt model."""

    pm: PromptModel

    def load_state(self, state: Mapping[str, torch.Tensor]) -> None:
        load_trainable_state(self.pm, state)

    def score(self, texts: Sequence[str], batch_size: int,
              pattern: str | None = None) -> torch.Tensor:
        return self.pm.score(texts, batch_size, pattern)


@dataclass
class EagerTrainer:
    """Local training with the PyTorch prompt model (AdamW, :func:`lpfl.training.train_steps`)."""

    pm: PromptModel

    def load_state(self, state: Mapping[str, torch.Tensor]) -> None:
        load_trainable_state(self.pm, state)

    def train(self, examples: Sequence[TrainExample], plan: Sequence[Sequence[int]], lr: float,
              weight_decay: float, lm: LmBatches | None = None) -> float:
        return train_steps(self.pm, examples, plan, lr, weight_decay, lm)

    def state(self) -> dict[str, torch.Tensor]:
        return trainable_state(self.pm)


@dataclass
class ClientRuntime:
    """A client's scorer and trainer, and what to tell the server about them."""

    scorer: Scorer
    trainer: LocalTrainer
    backend: str
    """The soft-labelling backend: ``eager``, ``executorch`` or ``onnxruntime``."""
    training: str
    """Where training runs: ``eager`` or ``executorch``."""
    num_classes: int
    model_id: str
    versions: dict[str, str] = field(default_factory=dict)
    """Runtime component versions for the hello (e.g. ``{"executorch": "1.5.1"}``)."""

    @classmethod
    def eager(cls, pm: PromptModel) -> ClientRuntime:
        import peft
        import transformers

        return cls(EagerScorer(pm), EagerTrainer(pm), "eager", "eager", pm.num_classes,
                   pm.base.model_id,
                   {"transformers": transformers.__version__, "peft": peft.__version__})
