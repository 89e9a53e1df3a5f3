"""Soft-labelling with an exported program (ExecuTorch or ONNX Runtime) instead of eager torch.

:class:`ProgramScorer` opens an artefact folder made by ``lpfl export``, checks its manifest
against this client (runtime version, base model id, adapter shapes), builds the prompt encoder
from the artefact's own tokenizer files, and scores texts with the same contract as
:meth:`lpfl.model.prompt.PromptModel.score`. Each round's global adapter goes in with
:meth:`ProgramScorer.load_state`: LoRA tensors are inputs of an ONNX program and the
external data file of an ExecuTorch program, so nothing is re-exported and the base weights ship
once. Until then the adapter is zero (the base model's scores).

The runtimes are imported when an artefact is opened, so this module imports without them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from lpfl.artefact import (
    TOKEN_INPUTS,
    Manifest,
    ProgramEntry,
    check_compatible,
    load_manifest,
    method_name,
    pad_tokens,
    rewrite_lora_data,
    runtime_version,
    verify_files,
)
from lpfl.config import PromptSettings
from lpfl.errors import ArtefactError
from lpfl.model.prompt import PromptEncoder, score_in_length_order

log = logging.getLogger(__name__)


class _Runner(Protocol):
    def set_lora(self, state: Mapping[str, torch.Tensor]) -> None: ...

    def run(self, tokens: Sequence[torch.Tensor]) -> torch.Tensor: ...


def use_torch_threads() -> None:
    """Give ExecuTorch's threadpool (XNNPACK's threads) as many threads as torch has, so a
    client's ``--threads`` / device profile holds for every runtime."""
    from executorch.extension.pybindings.portable_lib import (
        _threadpool_get_thread_count,
        _unsafe_reset_threadpool,
    )

    if _threadpool_get_thread_count() != torch.get_num_threads():
        _unsafe_reset_threadpool(torch.get_num_threads())


class _ExecutorchRunner:
    """The static score methods of a .pte program, through ExecuTorch's pybindings, with as
    many XNNPACK threads as torch uses (so runtimes compare at equal threads).

    The LoRA tensors live in the program's data file (``lora.ptd``): :meth:`set_lora` writes the
    adapter's bytes under the keys the manifest names and reloads the program with that data.
    :meth:`run` pads a batch (at most the program's static batch, as :class:`ProgramScorer`
    makes them) to that batch and the shortest sequence bucket that holds it, and drops the
    padding rows from the result.
    """

    def __init__(self, artefact: Path, entry: ProgramEntry, manifest: Manifest) -> None:
        import executorch.kernels.quantized  # noqa: F401  (int8 embedding kernels)

        use_torch_threads()
        if not (entry.data_file and manifest.lora_keys and manifest.seq_buckets
                and manifest.static_batch):
            raise ArtefactError(f"{artefact} was exported by an older lpfl (LoRA as program "
                                "inputs); re-export it with `lpfl export`")
        self._program = (artefact / entry.file).read_bytes()
        self._template = (artefact / entry.data_file).read_bytes()
        self._keys = manifest.lora_keys
        self._batch = manifest.static_batch
        self._buckets = manifest.seq_buckets
        self._module: Any = None
        self._data = b""

    def set_lora(self, state: Mapping[str, torch.Tensor]) -> None:
        from executorch.extension.pybindings.portable_lib import (
            _load_for_executorch_from_buffer,
        )

        data = rewrite_lora_data(self._template, self._keys, state)
        module = _load_for_executorch_from_buffer(self._program, data_map_buffer=data)
        # The module reads both buffers in place (methods load lazily): keep them alive with it.
        self._module, self._data = module, data

    def run(self, tokens: Sequence[torch.Tensor]) -> torch.Tensor:
        rows, length = tokens[0].shape
        seq_len = next((n for n in self._buckets if n >= length), None)
        if seq_len is None:
            raise ArtefactError(f"a {length}-token prompt exceeds the program's longest method "
                                f"({self._buckets[-1]}); re-export with a larger --max-seq-len")
        padded = pad_tokens(list(tokens), self._batch, seq_len)
        out: torch.Tensor = self._module.run_method(method_name(seq_len), padded)[0]
        return out[:rows]


class _OnnxRunner:
    """An ``onnxruntime.InferenceSession`` on the CPU, with torch's thread count; the LoRA
    tensors are inputs of the graph, fed with every batch."""

    def __init__(self, artefact: Path, entry: ProgramEntry, manifest: Manifest) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(artefact / entry.file), options,
                                             providers=["CPUExecutionProvider"])
        self._names = [i.name for i in self._session.get_inputs()]
        self._lora: list[torch.Tensor] = []

    def set_lora(self, state: Mapping[str, torch.Tensor]) -> None:
        self._lora = list(state.values())

    def run(self, tokens: Sequence[torch.Tensor]) -> torch.Tensor:
        feeds = {name: t.numpy() for name, t in zip(self._names, [*tokens, *self._lora],
                                                     strict=True)}
        return torch.from_numpy(self._session.run(None, feeds)[0])


_RUNNERS: dict[str, type[_ExecutorchRunner] | type[_OnnxRunner]] = {
    "executorch": _ExecutorchRunner, "onnxruntime": _OnnxRunner}


def open_encoder(artefact: Path, manifest: Manifest) -> PromptEncoder:
    """The prompt encoder of an artefact, from its tokenizer files and manifest prompt."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(artefact / manifest.tokenizer_dir)
    encoder = PromptEncoder(tokenizer, PromptSettings(manifest.pattern, manifest.label_words),
                            manifest.max_seq_len, causal=True)
    if encoder.label_tokens != manifest.label_tokens:
        raise ArtefactError(f"the artefact's tokenizer maps {list(manifest.label_words)} to "
                            f"tokens {list(encoder.label_tokens)}, its manifest says "
                            f"{list(manifest.label_tokens)}: the tokenizer files are damaged; "
                            "copy the artefact again")
    return encoder


class ProgramScorer:
    """Class logits for texts from an exported score program; see the module docstring.

    ``runtime`` is ``executorch`` or ``onnxruntime``; ``model_id`` and ``lora_shapes`` describe
    the client's model (its base model id and its adapter's tensor names -> shapes), ``prompt``
    and ``max_seq_len`` the run's prompt (checked when given). An artefact that does not fit is
    refused with an :class:`~lpfl.errors.ArtefactError`.
    """

    def __init__(self, artefact: Path, *, runtime: str, model_id: str,
                 lora_shapes: Mapping[str, tuple[int, ...]], verify: bool = True,
                 prompt: PromptSettings | None = None, max_seq_len: int = 0) -> None:
        self.manifest = load_manifest(artefact)
        check_compatible(self.manifest, runtime=runtime, runtime_version=runtime_version(runtime),
                         model_id=model_id, lora_shapes=lora_shapes, prompt=prompt,
                         max_seq_len=max_seq_len)
        if verify:
            verify_files(artefact, self.manifest)
        entry = self.manifest.program("score")
        self.encoder = open_encoder(artefact, self.manifest)
        self._runner: _Runner = _RUNNERS[runtime](artefact, entry, self.manifest)
        self._runner.set_lora({name: torch.zeros(shape)
                               for name, shape in self.manifest.lora_shapes.items()})
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
        self._runner.set_lora({name: state[name].detach().to("cpu", torch.float32).contiguous()
                               for name in expected})

    @torch.no_grad()
    def score(self, texts: Sequence[str], batch_size: int = 32,
              pattern: str | None = None) -> torch.Tensor:
        """Class logits, shape ``[len(texts), num_classes]`` (as ``PromptModel.score``, in
        batches of similar prompt length, under ``pattern`` when given; a static program runs
        its own batch size)."""
        step = self.manifest.static_batch or max(1, min(batch_size, self.manifest.max_batch))
        encoder = self.encoder if pattern is None else self.encoder.for_pattern(pattern)
        return score_in_length_order(encoder, texts, step, lambda batch: self._runner.run(
            [batch[k] for k in TOKEN_INPUTS]))
