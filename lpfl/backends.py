"""Where a client's two jobs run: soft-labelling and local LoRA training.

``--backend eager`` runs both in PyTorch on the prompt model. ``--backend executorch`` or
``onnxruntime`` scores the unlabeled texts with an exported program from ``--artefact DIR`` (made
by ``lpfl export``) and trains with the artefact's ExecuTorch training program when it has one,
else eagerly (said in the log and in the hello: nothing falls back silently). Each round the new
global adapter is written into the programs; nothing is re-exported.

A client whose backends are all programs never loads the torch model: its tokenizer and prompt
come from the artefact, which is what makes the edge footprint small.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lpfl.config import PromptSettings
from lpfl.errors import ArtefactError, ConfigError
from lpfl.model.adapters import trainable_state
from lpfl.model.prompt import PromptModel
from lpfl.runtime import ClientRuntime, EagerTrainer, LocalTrainer
from lpfl.training import LmBatches, TrainExample

if TYPE_CHECKING:
    from lpfl.program_trainer import Encode, ProgramTrainer

log = logging.getLogger(__name__)

BACKENDS = ("eager", "executorch", "onnxruntime")


@dataclass
class ExecuTorchTrainer:
    """Local training on the artefact's ExecuTorch training program: the same batches, loss and
    AdamW as :class:`EagerTrainer` (see :mod:`lpfl.program_trainer`)."""

    program: ProgramTrainer
    encode: Encode

    def load_state(self, state: Mapping[str, torch.Tensor]) -> None:
        self.program.load_state(state)

    def train(self, examples: Sequence[TrainExample], plan: Sequence[Sequence[int]], lr: float,
              weight_decay: float, lm: LmBatches | None = None) -> float:
        from lpfl.program_trainer import program_train_steps

        return program_train_steps(self.program, self.encode, examples, plan, lr, weight_decay,
                                   lm)

    def state(self) -> dict[str, torch.Tensor]:
        return self.program.state()


def check_backend(backend: str, artefact: Path | None) -> None:
    """Refuse a backend name we do not know, or a program backend without an artefact."""
    if backend not in BACKENDS:
        raise ConfigError(f"--backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if backend != "eager" and artefact is None:
        raise ConfigError(f"--backend {backend} needs --artefact DIR, a folder made by "
                          f"`lpfl export --target {'onnx' if backend == 'onnxruntime' else '…'}`")


def _program_trainer(artefact: Path) -> ProgramTrainer | None:
    """The artefact's training program, if it has one this ExecuTorch can run; else None (and
    the log says why, so eager training is never a silent fallback)."""
    from lpfl.artefact import installed_version, load_manifest
    from lpfl.program_trainer import ProgramTrainer

    manifest = load_manifest(artefact)
    entries = [p for p in manifest.programs if p.role == "train"]
    if not entries:
        log.warning("%s has no training program (export it with --training): training runs "
                    "eagerly", artefact)
        return None
    entry = entries[0]
    installed = installed_version("executorch")
    if entry.runtime_version != installed:
        log.warning("the training program was written by executorch %s, this client has %r: "
                    "training runs eagerly (re-export with this version to train on-device)",
                    entry.runtime_version, installed or "none")
        return None
    return ProgramTrainer(artefact / entry.file, manifest.lora_shapes)


def program_runtime(backend: str, artefact: Path, model_id: str,
                    eager_model: Callable[[], PromptModel],
                    eager_training: bool = False, prompt: PromptSettings | None = None,
                    max_seq_len: int = 0) -> ClientRuntime:
    """Soft-label with the artefact's score program on ``backend``; train with its ExecuTorch
    training program unless ``eager_training`` (or the artefact has none), else on the eager
    model that ``eager_model`` builds. Only the eager path loads the torch model. The run's
    ``prompt`` and ``max_seq_len``, when given, must be the artefact's.
    """
    from lpfl.artefact import runtime_version
    from lpfl.program_scorer import ProgramScorer

    program = None if eager_training else _program_trainer(artefact)
    trainer: LocalTrainer
    if program is not None:
        shapes = {name: tuple(t.shape) for name, t in program.parameters.items()}
        scorer = ProgramScorer(artefact, runtime=backend, model_id=model_id, lora_shapes=shapes,
                               prompt=prompt, max_seq_len=max_seq_len)
        if scorer.num_classes != program.num_classes:
            raise ArtefactError(f"{artefact}: the score program has {scorer.num_classes} "
                                f"classes, the training program {program.num_classes}; "
                                "re-export the artefact")
        trainer, training = ExecuTorchTrainer(program, scorer.encoder.encode), "executorch"
    else:
        pm = eager_model()
        shapes = {name: tuple(t.shape) for name, t in trainable_state(pm).items()}
        scorer = ProgramScorer(artefact, runtime=backend, model_id=pm.base.model_id,
                               lora_shapes=shapes, prompt=prompt, max_seq_len=max_seq_len)
        trainer, training = EagerTrainer(pm), "eager"
    versions = {backend: runtime_version(backend)}
    if training == "executorch":
        versions["executorch"] = runtime_version("executorch")
    log.info("soft-labelling on %s (%s), training on %s", backend, artefact, training)
    return ClientRuntime(scorer, trainer, backend, training, scorer.num_classes, model_id,
                         versions)
