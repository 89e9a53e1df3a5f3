"""Parity of an exported score program with eager PyTorch: logits, decisions and speed.

Run at the end of every export (and by the tests): the artefact is opened through the same
:class:`~lpfl.program_scorer.ProgramScorer` a client uses, and compared with the
eager prompt model on MR sentences, with the exported (zero) adapter and with a random one fed
as new inputs (the no-re-export path). fp32 programs must match within
:data:`FP32_TOLERANCE` and agree on at least :data:`FP32_AGREEMENT` of the decisions; quantized
programs are measured and reported against :data:`QUANT_AGREEMENT_GOAL`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lpfl.errors import ArtefactError
from lpfl.model.adapters import load_trainable_state, trainable_state
from lpfl.model.prompt import PromptModel
from lpfl.program_scorer import ProgramScorer

log = logging.getLogger(__name__)

FP32_TOLERANCE = 1e-3
"""Largest |program - eager| label-word logit allowed for an fp32 program (XNNPACK and ONNX
Runtime sum in other orders than torch; real differences are ~1e-5 on SmolLM2)."""
FP32_AGREEMENT = 0.99
QUANT_AGREEMENT_GOAL = 0.97
RANDOM_ADAPTER_TEXTS = 16


@dataclass(frozen=True)
class Parity:
    """How an exported program compares with eager PyTorch on ``texts`` sentences."""

    texts: int
    max_abs_diff: float
    """Largest label-word logit difference, exported (zero) adapter."""
    agreement: float
    """Fraction of texts with the same arg-max class."""
    random_adapter_max_abs_diff: float
    """Largest difference after feeding both the same random adapter (no re-export)."""
    eager_s: float
    program_s: float

    @property
    def speedup(self) -> float:
        return self.eager_s / self.program_s if self.program_s > 0 else 0.0


def parity_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` MR sentences, a fixed seeded sample of both classes."""
    from lpfl.data import load_corpus

    corpus = load_corpus("mr")
    picks = np.random.default_rng(seed).choice(len(corpus), size=min(n, len(corpus)),
                                               replace=False)
    return [corpus[int(i)].text for i in picks]


def random_adapter(pm: PromptModel, seed: int = 1, scale: float = 0.05) -> dict[str, torch.Tensor]:
    """A random adapter of ``pm``'s shapes (both LoRA matrices non-zero, so it changes logits)."""
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(t.shape, generator=generator) * scale
            for name, t in trainable_state(pm).items()}


def _timed_scores(score: Callable[[Sequence[str], int], torch.Tensor], texts: Sequence[str],
                  batch_size: int) -> tuple[torch.Tensor, float]:
    started = time.perf_counter()
    logits = score(texts, batch_size)
    return logits, time.perf_counter() - started


def measure(pm: PromptModel, scorer: ProgramScorer, texts: Sequence[str],
            batch_size: int = 32) -> Parity:
    """Compare ``scorer`` with ``pm`` (same adapter) on ``texts``; restores ``pm``'s adapter."""
    initial = trainable_state(pm)
    scorer.load_state(initial)
    eager, eager_s = _timed_scores(pm.score, texts, batch_size)
    program, program_s = _timed_scores(scorer.score, texts, batch_size)
    sample = texts[:RANDOM_ADAPTER_TEXTS]
    adapter = random_adapter(pm)
    load_trainable_state(pm, adapter)
    scorer.load_state(adapter)
    try:
        random_diff = float((scorer.score(sample) - pm.score(sample)).abs().max())
    finally:
        load_trainable_state(pm, initial)
        scorer.load_state(initial)
    parity = Parity(texts=len(texts), max_abs_diff=float((program - eager).abs().max()),
                    agreement=float((program.argmax(-1) == eager.argmax(-1)).float().mean()),
                    random_adapter_max_abs_diff=random_diff, eager_s=eager_s,
                    program_s=program_s)
    log.info("parity on %d texts: max |Δ| %.2e (random adapter %.2e), agreement %.3f, "
             "%.2fx eager speed", parity.texts, parity.max_abs_diff,
             parity.random_adapter_max_abs_diff, parity.agreement, parity.speedup)
    return parity


def check(parity: Parity, quant: str) -> None:
    """Refuse an fp32 program that misses the tolerance; warn for a quantized one below goal."""
    if quant == "none":
        worst = max(parity.max_abs_diff, parity.random_adapter_max_abs_diff)
        if worst > FP32_TOLERANCE or parity.agreement < FP32_AGREEMENT:
            raise ArtefactError(
                f"the fp32 program differs from eager PyTorch: max |Δ logit| {worst:.2e} "
                f"(allowed {FP32_TOLERANCE:.0e}), decision agreement {parity.agreement:.3f} "
                f"(needed {FP32_AGREEMENT}); this is an exporter bug: report it with the "
                "manifest")
    elif parity.agreement < QUANT_AGREEMENT_GOAL:
        log.warning("%s program agrees with eager on %.1f%% of decisions (goal %.0f%%): try "
                    "--quant int8 or a smaller --group-size", quant, 100 * parity.agreement,
                    100 * QUANT_AGREEMENT_GOAL)
