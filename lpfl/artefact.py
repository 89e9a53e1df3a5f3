"""``manifest.json``: what an exported artefact holds, and the check a client runs before use.

An artefact folder holds one or more programs (a soft-labelling ``score`` program, optionally an
on-device ``train`` program), the tokenizer files and this manifest. The manifest records what a
client needs to use the programs without the torch model (prompt pattern, label words and each
word's token ids, maximum sequence length, LoRA tensor names and shapes) and what it must match: the
runtime and its exact version (a program only runs in the runtime version that wrote it), the
base model id and the adapter shapes. :func:`check_compatible` refuses a mismatch with an
:class:`~lpfl.errors.ArtefactError` that says which field differs and what to do.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch

from lpfl.config import LoraSettings, PromptSettings, build_section
from lpfl.errors import ArtefactError, ConfigError

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
SCHEMA_VERSION = 1
ROLES = ("score", "train")
RUNTIME_PACKAGES = {"executorch": "executorch", "onnxruntime": "onnxruntime"}
"""Runtime name -> the Python distribution whose version a program is tied to."""
QUANTS = ("none", "int8", "8da4w")
EXPORTER_PACKAGES = ("lpfl", "torch", "transformers", "peft", "executorch", "torchao",
                     "onnxruntime", "onnx", "onnxscript")


def installed_version(package: str) -> str:
    """The installed version of ``package``, or ``""`` when it is not installed."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return ""


def runtime_version(runtime: str) -> str:
    """The exact installed version of ``runtime``; an ArtefactError if unknown or missing."""
    if runtime not in RUNTIME_PACKAGES:
        raise ArtefactError(f"unknown runtime {runtime!r}; known: {', '.join(RUNTIME_PACKAGES)}")
    version = installed_version(RUNTIME_PACKAGES[runtime])
    if not version:
        raise ArtefactError(f"runtime {runtime!r} is not installed: pip install "
                            f"{RUNTIME_PACKAGES[runtime]} (the version the artefact names)")
    return version


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ProgramEntry:
    """One program file of an artefact: its role, runtime (exact version), quantization, digest."""

    role: str
    file: str
    """Path relative to the artefact folder."""
    runtime: str
    runtime_version: str
    quant: str
    bytes: int
    sha256: str
    data_file: str = ""
    """The program's external data file (the LoRA tensors of an ExecuTorch score program), or
    empty; relative to the artefact folder."""
    data_sha256: str = ""

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ArtefactError(f"program role {self.role!r}: use one of {ROLES}")
        if self.runtime not in RUNTIME_PACKAGES:
            raise ArtefactError(f"program runtime {self.runtime!r}: use one of "
                                f"{tuple(RUNTIME_PACKAGES)}")
        if self.quant not in QUANTS:
            raise ArtefactError(f"program quant {self.quant!r}: use one of {QUANTS}")


def program_entry(path: Path, artefact_dir: Path, role: str, runtime: str, quant: str,
                  data: Path | None = None) -> ProgramEntry:
    """Describe ``path`` and its data file ``data`` (inside ``artefact_dir``): measures size and
    sha256 and records the installed version of ``runtime`` (the one that wrote the program)."""
    def relative(p: Path) -> str:
        return p.resolve().relative_to(artefact_dir.resolve()).as_posix()

    return ProgramEntry(role=role, file=relative(path), runtime=runtime,
                        runtime_version=runtime_version(runtime), quant=quant,
                        bytes=path.stat().st_size, sha256=sha256_of(path),
                        data_file="" if data is None else relative(data),
                        data_sha256="" if data is None else sha256_of(data))


@dataclass(frozen=True)
class Manifest:
    """Everything a client needs to check and use an artefact without the torch model."""

    model_id: str
    tokenizer_files: tuple[str, ...]
    """Relative paths of the copied tokenizer files (load with AutoTokenizer on their folder)."""
    pattern: str
    label_words: tuple[str, ...]
    label_tokens: tuple[tuple[int, ...], ...]
    """Each label word's token ids, as the exporting tokenizer split it; the program scores a word
    of several tokens by their summed log-probability (:mod:`lpfl.model.verbalizer`)."""
    max_seq_len: int
    lora_shapes: Mapping[str, tuple[int, ...]]
    """PEFT state-dict names -> shapes, in the order a score program takes them as inputs."""
    lora: LoraSettings
    programs: tuple[ProgramEntry, ...]
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    exporter: Mapping[str, str] = field(
        default_factory=lambda: {p: installed_version(p) for p in EXPORTER_PACKAGES})
    """Versions of the packages that made the artefact (for bug reports, not checked)."""
    parity: Mapping[str, float] = field(default_factory=dict)
    """Parity of the score program against eager PyTorch, as measured at export."""
    max_batch: int = 64
    """Largest batch the score program takes (its batch dimension is dynamic up to this)."""
    static_batch: int = 0
    """The batch of every score method when its shapes are static (ExecuTorch), else 0."""
    seq_buckets: tuple[int, ...] = ()
    """Prompt lengths of the static score methods ``forward_<n>``; empty: one ``forward`` with
    dynamic length."""
    lora_keys: Mapping[str, str] = field(default_factory=dict)
    """PEFT name -> key of that LoRA tensor in the score program's data file; empty when the
    LoRA tensors are program inputs (ONNX)."""
    schema: int = SCHEMA_VERSION

    def program(self, role: str) -> ProgramEntry:
        """The program with ``role``; an ArtefactError if the artefact has none."""
        for entry in self.programs:
            if entry.role == role:
                return entry
        raise ArtefactError(f"this artefact has no {role!r} program (it has "
                            f"{[p.role for p in self.programs]}); re-export it"
                            + (" with --training" if role == "train" else ""))

    @property
    def tokenizer_dir(self) -> str:
        """The folder (relative to the artefact) holding the tokenizer files."""
        return str(Path(self.tokenizer_files[0]).parent) if self.tokenizer_files else "."


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    """Write ``manifest.json`` into ``directory`` and return its path."""
    path = directory / MANIFEST_FILE
    path.write_text(json.dumps(asdict(manifest), indent=2) + "\n", encoding="utf-8")
    return path


def load_manifest(directory: Path) -> Manifest:
    """Read and validate ``directory/manifest.json``; an ArtefactError says what is wrong."""
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise ArtefactError(f"{path} does not exist: point at a folder made by `lpfl export`")
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ArtefactError(f"{path} is not valid JSON ({exc}); re-export the artefact") from None
    if table.get("schema") != SCHEMA_VERSION:
        raise ArtefactError(f"{path} has manifest schema {table.get('schema')!r}, this lpfl "
                            f"reads schema {SCHEMA_VERSION}: re-export with this lpfl version")
    if "label_ids" in table:  # written before words of several tokens: one id per word
        table["label_tokens"] = [[i] for i in table.pop("label_ids")]
    try:
        return build_section(Manifest, table, "manifest")
    except ConfigError as exc:
        raise ArtefactError(f"{path}: {exc}; re-export the artefact") from None


def verify_files(directory: Path, manifest: Manifest) -> None:
    """Check every program file exists with the recorded size and sha256 (catches a torn copy)."""
    for entry in manifest.programs:
        path = directory / entry.file
        if not path.is_file():
            raise ArtefactError(f"{path} named by the manifest is missing; copy the whole "
                                "artefact folder")
        if path.stat().st_size != entry.bytes or sha256_of(path) != entry.sha256:
            raise ArtefactError(f"{path} does not match the size/sha256 in the manifest: the "
                                "copy is damaged; copy the artefact folder again")
        data = directory / entry.data_file
        if entry.data_file and (not data.is_file() or sha256_of(data) != entry.data_sha256):
            raise ArtefactError(f"{data} (the program's data file) is missing or does not "
                                "match the sha256 in the manifest; copy the artefact again")


def check_compatible(manifest: Manifest, *, runtime: str, runtime_version: str, model_id: str,
                     lora_shapes: Mapping[str, tuple[int, ...]],
                     prompt: PromptSettings | None = None, max_seq_len: int = 0) -> None:
    """Refuse an artefact this client cannot use, naming the field that differs and the fix.

    ``runtime``/``runtime_version`` are the client's installed runtime; every program of the
    artefact for that runtime must have been written by exactly that version. ``model_id`` and
    ``lora_shapes`` are the client's base model and adapter (names -> shapes). ``prompt`` and
    ``max_seq_len`` (when given) are the run's: an artefact exported for another pattern, other
    label words or another length would soft-label differently from what the client trains.
    """
    if prompt is not None:
        for name, exported, wanted in (("pattern", manifest.pattern, prompt.pattern),
                                       ("label_words", tuple(manifest.label_words),
                                        tuple(prompt.label_words))):
            if exported != wanted:
                raise ArtefactError(f"{name}: the artefact was exported for {exported!r}, the "
                                    f"run uses {wanted!r}; re-export with --model RUN.toml (the "
                                    "run file) or use --backend eager")
    if max_seq_len and manifest.max_seq_len != max_seq_len:
        raise ArtefactError(f"max_seq_len: the artefact takes prompts of up to "
                            f"{manifest.max_seq_len} tokens, the run's model.max_length is "
                            f"{max_seq_len}; re-export with --model RUN.toml or use --backend "
                            "eager")
    programs = [p for p in manifest.programs if p.runtime == runtime]
    if not programs:
        raise ArtefactError(f"runtime: the artefact has programs for "
                            f"{sorted({p.runtime for p in manifest.programs})}, not {runtime!r}; "
                            f"re-export with --target for {runtime} or use --backend eager")
    for entry in programs:
        if entry.runtime_version != runtime_version:
            raise ArtefactError(
                f"runtime_version: {entry.file} was written by {runtime} "
                f"{entry.runtime_version}, this client has {runtime} {runtime_version}; "
                f"re-export with {runtime}=={runtime_version}, install "
                f"{RUNTIME_PACKAGES[runtime]}=={entry.runtime_version}, or use --backend eager")
    if manifest.model_id != model_id:
        raise ArtefactError(f"model_id: the artefact was exported from {manifest.model_id!r}, "
                            f"this client runs {model_id!r}; re-export with --model for "
                            f"{model_id!r} or use --backend eager")
    theirs = {k: tuple(v) for k, v in manifest.lora_shapes.items()}
    ours = {k: tuple(v) for k, v in lora_shapes.items()}
    if theirs != ours:
        missing = sorted(set(ours) - set(theirs))[:3]
        extra = sorted(set(theirs) - set(ours))[:3]
        reshaped = sorted(k for k in set(ours) & set(theirs) if ours[k] != theirs[k])[:3]
        detail = "; ".join(
            f"{what} {names}" for what, names in (
                ("missing", missing), ("unexpected", extra),
                ("other shape", [f"{k}: artefact {theirs[k]} vs client {ours[k]}"
                                 for k in reshaped])) if names)
        raise ArtefactError(f"lora_shapes: the artefact's adapter does not match this client's "
                            f"({detail}); re-export with the run's [lora] settings "
                            f"(artefact: {manifest.lora}) or use --backend eager")
    log.debug("artefact for %s %s, model %s: compatible", runtime, runtime_version, model_id)


# --- what a program client feeds an exported program -------------------------------------

TOKEN_INPUTS = ("input_ids", "attention_mask", "position_ids")
"""A score program's token inputs, in order (an ONNX program takes the LoRA tensors after them).
"""
LORA_TAG = "lora"
"""ExecuTorch's external-data tag of the LoRA constants, hence the data file ``lora.ptd``."""
DATA_FILE = f"{LORA_TAG}.ptd"


def method_name(seq_len: int) -> str:
    """The score program's method for prompts padded to ``seq_len`` tokens."""
    return f"forward_{seq_len}"


def pad_tokens(tokens: list[torch.Tensor], batch: int, seq_len: int) -> list[torch.Tensor]:
    """Left-pad ``(input_ids, attention_mask, position_ids)`` to ``seq_len`` (masked out) and
    fill the batch up to ``batch`` rows with copies of the last row."""
    rows, length = tokens[0].shape
    if length > seq_len or rows > batch:
        raise ArtefactError(f"a batch of {rows}x{length} tokens does not fit a {batch}x{seq_len} "
                            "method")
    out = []
    for t in tokens:
        t = torch.nn.functional.pad(t, (seq_len - length, 0), value=0)
        if rows < batch:
            t = torch.cat([t, t[-1:].expand(batch - rows, seq_len)])
        out.append(t)
    return out


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """A tensor's float32 bytes, as a program's data file holds them."""
    return tensor.detach().to(torch.float32).contiguous().numpy().tobytes()


def rewrite_lora_data(template: bytes, keys: Mapping[str, str],
                      state: Mapping[str, torch.Tensor]) -> bytes:
    """The data file ``template`` with each LoRA tensor's bytes replaced by ``state``'s (PEFT
    names); shapes are checked by the caller, sizes here."""
    from executorch.exir._serialize._cord import Cord
    from executorch.extension.flat_tensor.serialize.serialize import FlatTensorSerializer

    serializer = FlatTensorSerializer()
    payload = serializer.deserialize(Cord(template))
    buffers = list(payload.buffers)
    for name, key in keys.items():
        index = payload.named_data[key].buffer_index
        new = tensor_bytes(state[name])
        if len(new) != len(buffers[index]):
            raise ArtefactError(f"adapter tensor {name} has {len(new)} bytes, the program's "
                                f"data file holds {len(buffers[index])}")
        buffers[index] = new
    payload.buffers = buffers
    return bytes(serializer.serialize(payload))
