"""Local LoRA training with an ExecuTorch training program instead of eager PyTorch.

The program (:mod:`lpfl.export.training_program`) takes the LoRA tensors and one batch and
returns the loss, the class logits and the gradients of the LoRA tensors; its second method
returns the language-model loss of a batch of prompts and its gradients, which a step adds,
scaled by ``soft_labels.lm_weight``, to the classification gradients. :class:`ProgramTrainer`
keeps the adapter (under PEFT's names, those of :func:`lpfl.model.adapters.trainable_state`),
feeds it to the program at every step and applies the same ``torch.optim.AdamW`` update as
:func:`lpfl.training.train_steps` to the gradients. :func:`program_train_steps` is a drop-in for
:func:`lpfl.training.train_steps`: same batch plan, same loss (language-model term included),
same optimizer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from lpfl.errors import ArtefactError, ConfigError
from lpfl.program_scorer import use_torch_threads
from lpfl.training import LmBatches, TrainExample, batch_tensors, check_plans

log = logging.getLogger(__name__)

METHOD = "forward"
LM_METHOD = "lm_gradients"
BATCH_INPUTS = ("input_ids", "attention_mask", "position_ids", "targets", "weights")
"""The program's inputs after the LoRA tensors (:func:`pad_inputs` makes them)."""

Encode = Callable[[Sequence[str]], dict[str, torch.Tensor]]


def pad_batch(batch: Mapping[str, torch.Tensor], weights: torch.Tensor, batch_size: int,
              seq_len: int) -> tuple[torch.Tensor, ...]:
    """Fit a left-padded causal batch to the program's fixed shape: (ids, mask, positions,
    weights).

    Columns are added on the left (masked, position 0); missing rows repeat the first row with
    weight 0, so they change neither the weighted loss nor the gradients.
    """
    ids, mask, positions = (batch[k] for k in ("input_ids", "attention_mask", "position_ids"))
    rows, length = ids.shape
    if rows > batch_size or length > seq_len:
        raise ValueError(f"a batch of {rows} x {length} tokens does not fit the program's "
                         f"{batch_size} x {seq_len}: export it with a larger batch_size or "
                         "max_seq_len, or lower the batch size / model.max_length")
    left = seq_len - length
    extra = batch_size - rows

    def fit(t: torch.Tensor) -> torch.Tensor:
        t = torch.nn.functional.pad(t, (left, 0), value=0)
        return torch.cat([t, t[:1].expand(extra, -1)]) if extra else t

    padded_weights = torch.cat([weights, weights.new_zeros(extra)])
    return fit(ids.long()), fit(mask.long()), fit(positions.long()), padded_weights.float()


def pad_inputs(batch: Mapping[str, torch.Tensor], targets: torch.Tensor, weights: torch.Tensor,
               batch_size: int, seq_len: int) -> tuple[torch.Tensor, ...]:
    """:func:`pad_batch` with the targets (filler rows repeat the first): the ``forward``
    method's batch inputs, in :data:`BATCH_INPUTS` order."""
    ids, mask, positions, padded_weights = pad_batch(batch, weights, batch_size, seq_len)
    extra = batch_size - targets.shape[0]
    padded_targets = torch.cat([targets, targets[:1].expand(extra, -1)]).float()
    return ids, mask, positions, padded_targets, padded_weights


class ProgramTrainer:
    """One training program, loaded once, and the adapter it trains.

    ``lora_shapes`` are the artefact's LoRA tensors (PEFT name -> shape, as in its manifest); the
    program takes them in sorted-name order. Call :meth:`load_state` with each round's global
    adapter, then :meth:`step` as often as the round asks (a fresh AdamW per
    :meth:`reset_optimizer`), then :meth:`state` for the update.
    """

    def __init__(self, program: Path | bytes,
                 lora_shapes: Mapping[str, Sequence[int]]) -> None:
        from executorch.extension.pybindings.portable_lib import (
            _load_for_executorch,
            _load_for_executorch_from_buffer,
        )

        if not isinstance(program, bytes) and not Path(program).is_file():
            raise ArtefactError(f"training program {program} does not exist; export one with "
                                "lpfl export --training")
        use_torch_threads()
        # The runtime reads a buffer in place and lazily: the bytes must live as long as it.
        self._buffer = program if isinstance(program, bytes) else None
        self.module = (_load_for_executorch_from_buffer(program) if isinstance(program, bytes)
                       else _load_for_executorch(str(program)))
        meta = self.module.method_meta(METHOD)
        names = sorted(lora_shapes)
        if meta.num_inputs() != len(names) + len(BATCH_INPUTS):
            raise ArtefactError(f"the training program takes {meta.num_inputs()} inputs, not "
                                f"{len(names)} LoRA tensors and a batch: it was exported for "
                                "other lora settings or by an older lpfl; re-export it")
        for index, name in enumerate(names):
            program_shape = tuple(meta.input_tensor_meta(index).sizes())
            if program_shape != tuple(lora_shapes[name]):
                raise ArtefactError(f"LoRA tensor {name}: the training program takes "
                                    f"{program_shape}, the artefact says "
                                    f"{tuple(lora_shapes[name])}; re-export it")
        first = len(names)
        self.batch_size, self.seq_len = (int(s) for s in meta.input_tensor_meta(first).sizes())
        self.num_classes = int(meta.input_tensor_meta(first + 3).sizes()[1])
        self.has_lm = LM_METHOD in self.module.method_names()
        self.parameters: dict[str, torch.Tensor] = {
            name: torch.zeros(tuple(lora_shapes[name])) for name in names}
        self._gradients: dict[str, torch.Tensor] = {}
        self._optimizer: torch.optim.AdamW | None = None
        self._weight_decay = 0.0
        log.info("training program: %d trainable tensors (%d values), batch %d x %d tokens",
                 len(self.parameters), sum(p.numel() for p in self.parameters.values()),
                 self.batch_size, self.seq_len)

    def load_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Write a (global) adapter into the program and start a fresh optimizer."""
        if set(state) != set(self.parameters):
            missing = sorted(set(self.parameters) - set(state))[:3]
            extra = sorted(set(state) - set(self.parameters))[:3]
            raise ArtefactError(f"the state does not fit the training program: missing "
                                f"{missing}, unexpected {extra}; export the program with the "
                                "run's lora settings")
        with torch.no_grad():
            for name, tensor in state.items():
                target = self.parameters[name]
                if tuple(tensor.shape) != tuple(target.shape):
                    raise ArtefactError(f"state tensor {name} has shape {tuple(tensor.shape)}, "
                                        f"the program's is {tuple(target.shape)}")
                target.copy_(tensor)
        self.reset_optimizer(self._weight_decay)

    def state(self) -> dict[str, torch.Tensor]:
        """A copy of the program's adapter, under PEFT's names."""
        return {name: p.detach().clone() for name, p in self.parameters.items()}

    def reset_optimizer(self, weight_decay: float = 0.0) -> None:
        """Forget the optimizer moments: the next :meth:`step` starts a fresh AdamW."""
        self._optimizer = None
        self._weight_decay = weight_decay

    def run(self, batch: Mapping[str, torch.Tensor], targets: torch.Tensor,
            weights: torch.Tensor) -> tuple[float, torch.Tensor]:
        """Forward and backward on one batch: (weighted soft-CE loss, class logits of the real
        rows). The gradients wait for :meth:`apply`; the weights are unchanged."""
        rows = targets.shape[0]
        inputs = pad_inputs(batch, targets, weights, self.batch_size, self.seq_len)
        outputs = self.module.run_method(METHOD, [*self.parameters.values(), *inputs])
        loss, logits, gradients = outputs[0], outputs[1], outputs[2:]
        self._gradients = dict(zip(self.parameters, gradients, strict=True))
        return float(loss), logits[:rows]

    def add_lm(self, batch: Mapping[str, torch.Tensor], weight: float) -> float:
        """The language-model loss of a batch of prompts; its gradients, times ``weight``, are
        added to those of the last :meth:`run` (as eager's ``loss + weight * lm_loss``)."""
        if not self.has_lm:
            raise ConfigError("this training program has no language-model method: re-export "
                              "the artefact with this lpfl, or set soft_labels.lm_weight = 0")
        if not self._gradients:
            raise RuntimeError("add_lm() adds to the gradients of a run(): call run() first")
        rows = batch["input_ids"].shape[0]
        inputs = pad_batch(batch, torch.ones(rows), self.batch_size, self.seq_len)
        outputs = self.module.run_method(LM_METHOD, [*self.parameters.values(), *inputs])
        for name, gradient in zip(self.parameters, outputs[1:], strict=True):
            self._gradients[name] = self._gradients[name] + weight * gradient
        return float(outputs[0])

    def apply(self, lr: float) -> None:
        """One AdamW update of the LoRA tensors with the gradients of the last :meth:`run`."""
        if not self._gradients:
            raise RuntimeError("apply() needs the gradients of a run() first")
        if self._optimizer is None:
            self._optimizer = torch.optim.AdamW(list(self.parameters.values()), lr=lr,
                                                weight_decay=self._weight_decay)
        for group in self._optimizer.param_groups:
            group["lr"] = lr
        for name, param in self.parameters.items():
            param.grad = self._gradients[name]
        self._optimizer.step()
        for param in self.parameters.values():
            param.grad = None
        self._gradients = {}

    def step(self, batch: Mapping[str, torch.Tensor], targets: torch.Tensor,
             weights: torch.Tensor, lr: float) -> float:
        """One training step; returns the batch's loss before the update."""
        loss, _ = self.run(batch, targets, weights)
        self.apply(lr)
        return loss


def program_train_steps(trainer: ProgramTrainer, encode: Encode,
                        examples: Sequence[TrainExample], plan: Sequence[Sequence[int]],
                        lr: float, weight_decay: float = 0.0,
                        lm: LmBatches | None = None) -> float:
    """:func:`lpfl.training.train_steps` on a training program: the same batches, the same
    weighted cross-entropy (plus ``lm``'s weighted language-model loss), the same AdamW (fresh
    each call), the same mean classification loss."""
    check_plans(plan, lm)
    trainer.reset_optimizer(weight_decay)
    total = 0.0
    for step, batch in enumerate(plan):
        chosen = [examples[i] for i in batch]
        targets, weights = batch_tensors(chosen)
        loss, _ = trainer.run(encode([e.text for e in chosen]), targets, weights)
        if lm is not None:
            trainer.add_lm(encode([lm.texts[i] for i in lm.plan[step]]), lm.weight)
        trainer.apply(lr)
        total += loss
    return total / len(plan)
