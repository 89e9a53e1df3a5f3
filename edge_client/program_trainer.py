"""Local LoRA training with an ExecuTorch training program instead of eager PyTorch.

The program (:mod:`lpfl.export.training_program`) computes the loss, the class logits and the
gradients of the LoRA tensors; its parameter tensors are the LoRA tensors themselves, and writing
into them updates the program's weights in place. :class:`ProgramTrainer` loads a global adapter
into them, applies the same ``torch.optim.AdamW`` update as :func:`lpfl.training.train_steps` to
the program's gradients (ExecuTorch's own Python optimizer is SGD only), and reads the adapter
back under PEFT's names (those of :func:`lpfl.model.adapters.trainable_state`).
:func:`program_train_steps` is a drop-in for :func:`lpfl.training.train_steps`: same batches from
the same ``rng``, same loss, same optimizer.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from lpfl.errors import ArtefactError
from lpfl.training import TrainExample, batches, example_losses

log = logging.getLogger(__name__)

METHOD = "forward"
PARAMETER_PREFIX = "network."  # the loss module's attribute holding the PEFT model
ADAPTER = "default"  # PEFT's adapter name; get_peft_model_state_dict drops ".default"

Encode = Callable[[Sequence[str]], dict[str, torch.Tensor]]


def peft_name(program_name: str) -> str:
    """The PEFT state-dict name of a program parameter (the rule of
    ``peft.utils.get_peft_model_state_dict``: drop the adapter name)."""
    return program_name.removeprefix(PARAMETER_PREFIX).replace(f".{ADAPTER}", "")


def pad_inputs(batch: Mapping[str, torch.Tensor], targets: torch.Tensor, weights: torch.Tensor,
               batch_size: int, seq_len: int) -> tuple[torch.Tensor, ...]:
    """Fit a left-padded causal batch to the program's fixed shape.

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
    return (fit(ids.long()), fit(mask.long()), fit(positions.long()),
            torch.cat([targets, targets[:1].expand(extra, -1)]).float(), padded_weights.float())


class ProgramTrainer:
    """One training program, loaded once; its LoRA tensors are the trainable state.

    Call :meth:`load_state` with each round's global adapter, then :meth:`step` as often as the
    round asks (a fresh AdamW per :meth:`reset_optimizer`), then :meth:`state` for the update.
    """

    def __init__(self, program: Path | bytes) -> None:
        from executorch.exir._warnings import ExperimentalWarning
        from executorch.extension.training import (
            _load_for_executorch_for_training,
            _load_for_executorch_for_training_from_buffer,
        )

        if not isinstance(program, bytes) and not Path(program).is_file():
            raise ArtefactError(f"training program {program} does not exist; export one with "
                                "lpfl export --training")
        # The training API is marked experimental; executorch is pinned, so the warning is noise.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            self.module = (_load_for_executorch_for_training_from_buffer(program)
                           if isinstance(program, bytes)
                           else _load_for_executorch_for_training(str(program)))
        meta = self.module.model.method_meta(METHOD)
        self.batch_size, self.seq_len = (int(s) for s in meta.input_tensor_meta(0).sizes())
        self.num_classes = int(meta.input_tensor_meta(3).sizes()[1])
        # The Python API exposes the parameter tensors only after a first run.
        self.module.forward_backward(METHOD, self._dummy_inputs())
        self.parameters: dict[str, torch.Tensor] = {
            peft_name(k): v for k, v in self.module.named_parameters().items()}
        self._optimizer: torch.optim.AdamW | None = None
        self._weight_decay = 0.0
        log.info("training program: %d trainable tensors (%d values), batch %d x %d tokens",
                 len(self.parameters), sum(p.numel() for p in self.parameters.values()),
                 self.batch_size, self.seq_len)

    def _dummy_inputs(self) -> tuple[torch.Tensor, ...]:
        b, n, c = self.batch_size, self.seq_len, self.num_classes
        return (torch.zeros(b, n, dtype=torch.long), torch.ones(b, n, dtype=torch.long),
                torch.arange(n).expand(b, n).contiguous(), torch.full((b, c), 1.0 / c),
                torch.ones(b))

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
        loss, logits = self.module.forward_backward(METHOD, inputs)
        return float(loss), logits[:rows]

    def apply(self, lr: float) -> None:
        """One AdamW update of the LoRA tensors with the gradients of the last :meth:`run`."""
        grads = {peft_name(k): g for k, g in self.module.named_gradients().items()}
        if self._optimizer is None:
            self._optimizer = torch.optim.AdamW(list(self.parameters.values()), lr=lr,
                                                weight_decay=self._weight_decay)
        for group in self._optimizer.param_groups:
            group["lr"] = lr
        for name, param in self.parameters.items():
            param.grad = grads[name]
        self._optimizer.step()
        for param in self.parameters.values():
            param.grad = None

    def step(self, batch: Mapping[str, torch.Tensor], targets: torch.Tensor,
             weights: torch.Tensor, lr: float) -> float:
        """One training step; returns the batch's loss before the update."""
        loss, _ = self.run(batch, targets, weights)
        self.apply(lr)
        return loss


def program_train_steps(trainer: ProgramTrainer, encode: Encode,
                        examples: Sequence[TrainExample], steps: int, batch_size: int, lr: float,
                        rng: np.random.Generator, soft_loss: str = "soft-ce",
                        weight_decay: float = 0.0) -> float:
    """:func:`lpfl.training.train_steps` on a training program: the same batches from ``rng``,
    the same AdamW (fresh each call), the same mean loss (for ``kl`` the reported loss subtracts
    the soft rows' target entropy; the gradient is the soft-CE one either way)."""
    if not examples:
        raise ValueError("no training examples")
    trainer.reset_optimizer(weight_decay)
    total = 0.0
    order = batches(len(examples), batch_size, rng)
    for _ in range(steps):
        chosen = [examples[i] for i in next(order)]
        targets = torch.tensor([e.target for e in chosen], dtype=torch.float32)
        weights = torch.tensor([e.weight for e in chosen], dtype=torch.float32)
        loss, logits = trainer.run(encode([e.text for e in chosen]), targets, weights)
        if soft_loss == "kl":
            soft = torch.tensor([e.soft for e in chosen])
            losses = example_losses(logits, targets, soft, soft_loss)
            loss = float((losses * weights).sum() / weights.sum().clamp_min(1e-12))
        trainer.apply(lr)
        total += loss
    return total / steps

