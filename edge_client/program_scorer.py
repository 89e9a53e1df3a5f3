"""Soft-labelling with an exported program (ExecuTorch or ONNX Runtime) instead of eager torch.

:class:`ProgramScorer` opens an artefact folder made by ``lpfl export``, checks its manifest
against this client (runtime version, base model id, adapter shapes), builds the prompt encoder
from the artefact's own tokenizer files, and scores texts with the same contract as
:meth:`lpfl.model.prompt.PromptModel.score`. Each round's global adapter goes in with
:meth:`ProgramScorer.load_state`: the LoRA tensors are program inputs, so nothing is re-exported
and the base weights ship once. Until then the adapter is zero (the base model's scores).

The runtimes are imported when an artefact is opened, so this module imports without them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import torch

from lpfl.config import PromptSettings
from lpfl.errors import ArtefactError
from lpfl.export.manifest import (
    Manifest,
    check_compatible,
    load_manifest,
    runtime_version,
    verify_files,
)
from lpfl.export.scoring_graph import TOKEN_INPUTS
from lpfl.model.prompt import PromptEncoder

log = logging.getLogger(__name__)


class _Runner(Protocol):
    def run(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor: ...


class _ExecutorchRunner:
    """The ``forward`` method of a .pte program, through ``executorch.runtime``, with as many
    XNNPACK threads as torch uses (so runtimes compare at equal threads)."""

    def __init__(self, path: Path) -> None:
        import executorch.kernels.quantized  # noqa: F401  (int8 embedding kernels)
        from executorch.extension.pybindings.portable_lib import (
            _threadpool_get_thread_count,
            _unsafe_reset_threadpool,
        )
        from executorch.runtime import Runtime

        if _threadpool_get_thread_count() != torch.get_num_threads():
            _unsafe_reset_threadpool(torch.get_num_threads())  # as many threads as torch

        method = Runtime.get().load_program(path).load_method("forward")
        if method is None:
            raise ArtefactError(f"{path} has no forward method; re-export the artefact")
        self._method = method

    def run(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        out: torch.Tensor = self._method.execute(list(inputs))[0]
        return out


class _OnnxRunner:
    """An ``onnxruntime.InferenceSession`` on the CPU, with torch's thread count."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(path), options,
                                             providers=["CPUExecutionProvider"])
        self._names = [i.name for i in self._session.get_inputs()]

    def run(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        feeds = {name: t.numpy() for name, t in zip(self._names, inputs, strict=True)}
        return torch.from_numpy(self._session.run(None, feeds)[0])


_RUNNERS: dict[str, type[_ExecutorchRunner] | type[_OnnxRunner]] = {
    "executorch": _ExecutorchRunner, "onnxruntime": _OnnxRunner}


def open_encoder(artefact: Path, manifest: Manifest) -> PromptEncoder:
    """The prompt encoder of an artefact, from its tokenizer files and manifest prompt."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(artefact / manifest.tokenizer_dir)
    encoder = PromptEncoder(tokenizer, PromptSettings(manifest.pattern, manifest.label_words),
                            manifest.max_seq_len, causal=True)
    if tuple(encoder.label_ids) != tuple(manifest.label_ids):
        raise ArtefactError(f"the artefact's tokenizer maps {list(manifest.label_words)} to "
                            f"{encoder.label_ids}, its manifest says {list(manifest.label_ids)}: "
                            "the tokenizer files are damaged; copy the artefact again")
    return encoder


class ProgramScorer:
    """Class logits for texts from an exported score program; see the module docstring.

    ``runtime`` is ``executorch`` or ``onnxruntime``; ``model_id`` and ``lora_shapes`` describe
    the client's model (its base model id and its adapter's tensor names -> shapes). An
    artefact that does not fit is refused with an :class:`~lpfl.errors.ArtefactError`.
    """

    def __init__(self, artefact: Path, *, runtime: str, model_id: str,
                 lora_shapes: Mapping[str, tuple[int, ...]], verify: bool = True) -> None:
        self.manifest = load_manifest(artefact)
        check_compatible(self.manifest, runtime=runtime, runtime_version=runtime_version(runtime),
                         model_id=model_id, lora_shapes=lora_shapes)
        if verify:
            verify_files(artefact, self.manifest)
        entry = self.manifest.program("score")
        self.encoder = open_encoder(artefact, self.manifest)
        self._runner = _RUNNERS[runtime](artefact / entry.file)
        self._lora = [torch.zeros(shape) for shape in self.manifest.lora_shapes.values()]
        log.info("opened %s (%s %s, quant %s)", artefact / entry.file, runtime,
                 entry.runtime_version, entry.quant)

    @property
    def num_classes(self) -> int:
        return self.encoder.num_classes

    def load_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Use the adapter ``state`` (PEFT names, as on the wire) from now on; no re-export."""
        expected = self.manifest.lora_shapes
        if set(state) != set(expected):
            missing = sorted(set(expected) - set(state))[:3]
            extra = sorted(set(state) - set(expected))[:3]
            raise ArtefactError(f"adapter state does not fit the program: missing {missing}, "
                                f"unexpected {extra}")
        for name, shape in expected.items():
            if tuple(state[name].shape) != tuple(shape):
                raise ArtefactError(f"adapter tensor {name} has shape "
                                    f"{tuple(state[name].shape)}, the program takes {shape}")
        self._lora = [state[name].detach().to("cpu", torch.float32).contiguous()
                      for name in expected]

    @torch.no_grad()
    def score(self, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        """Class logits, shape ``[len(texts), num_classes]`` (as ``PromptModel.score``)."""
        step = max(1, min(batch_size, self.manifest.max_batch))
        chunks = []
        for start in range(0, len(texts), step):
            batch = self.encoder.encode(texts[start : start + step])
            chunks.append(self._runner.run([*(batch[k] for k in TOKEN_INPUTS), *self._lora]))
        if not chunks:
            return torch.empty(0, self.num_classes)
        return torch.cat(chunks).float()
