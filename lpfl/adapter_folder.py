"""The result a user keeps: a run's final global adapter as a PEFT adapter folder.

A folder holds what ``peft`` writes with ``save_pretrained``, so
``peft.PeftModel.from_pretrained(base_model, FOLDER)`` loads it:

* ``adapter_config.json``: the LoRA settings (rank, alpha, target modules);
* ``adapter_model.safetensors``: the adapter tensors, named as
  ``peft.utils.get_peft_model_state_dict`` names them (the state every round sends);

plus what PEFT does not know and a prediction needs, in ``lpfl_prompt.json``: the base model
source it was trained on, the prompt pattern and verbalizer, the class names, the method and seed.
:func:`load_adapter_model` puts the three together into a prompt model.

Only LoRA methods have an adapter. FP-FL trains every parameter and zero-shot trains nothing:
:func:`save_final_state` writes no folder for them and says so in the line it returns.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lpfl.config import ModelSettings, PromptSettings, RunConfig
from lpfl.errors import ModelError
from lpfl.methods import Trains, lookup

if TYPE_CHECKING:
    from lpfl.model.prompt import PromptModel

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PROMPT_FILE = "lpfl_prompt.json"
FORMAT = 1
"""The version of ``lpfl_prompt.json``'s layout."""


@dataclass(frozen=True)
class AdapterInfo:
    """What ``lpfl_prompt.json`` records: the base model, prompt and classes of an adapter."""

    model: ModelSettings
    model_id: str
    prompt: PromptSettings
    class_names: tuple[str, ...]
    method: str
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "method": self.method, "seed": self.seed,
                "model": {"source": self.model.source, "max_length": self.model.max_length,
                          "model_id": self.model_id},
                "prompt": {"pattern": self.prompt.pattern,
                           "label_words": list(self.prompt.label_words)},
                "class_names": list(self.class_names)}

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> AdapterInfo:
        model, prompt = document["model"], document["prompt"]
        return cls(ModelSettings(source=str(model["source"]), max_length=int(model["max_length"])),
                   str(model["model_id"]),
                   PromptSettings(str(prompt["pattern"]), tuple(map(str, prompt["label_words"]))),
                   tuple(map(str, document["class_names"])), str(document["method"]),
                   int(document["seed"]))


def class_names(config: RunConfig) -> tuple[str, ...]:
    """The classes' names: ``data.label_names``, else the label words without their spaces
    (``class-0``, ``class-1`` ... where those are empty or not distinct)."""
    if config.data.label_names:
        return config.data.label_names
    words = tuple(word.strip() for word in config.prompt.label_words)
    if all(words) and len(set(words)) == len(words):
        return words
    return tuple(f"class-{i}" for i in range(len(words)))


def _kept_source(source: str) -> str:
    """A model source as the folder records it: a path made absolute, a name as it is."""
    path = Path(source).expanduser()
    return str(path.resolve()) if path.exists() else source


def write_adapter_folder(folder: str | Path, config: RunConfig, state: Mapping[str, torch.Tensor],
                         method: str, seed: int) -> Path:
    """Write a LoRA ``state`` (the global adapter of ``method``) as a PEFT adapter folder with
    its ``lpfl_prompt.json``; an earlier folder at the same place is replaced whole."""
    from peft import LoraConfig

    from lpfl.model.loading import model_id_of

    if lookup(method).trains is not Trains.LORA:
        raise ModelError(f"{method} does not train a LoRA adapter: there is no adapter folder "
                         "to write")
    target = Path(folder)
    info = AdapterInfo(config.model, model_id_of(config.model), config.prompt,
                       class_names(config), method, seed)
    source = _kept_source(config.model.source)
    lora = LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha,
                      lora_dropout=config.lora.dropout,
                      target_modules=list(config.lora.target_modules), bias="none",
                      inference_mode=True, base_model_name_or_path=source)
    document = info.to_dict()
    document["model"]["source"] = source
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        lora.save_pretrained(str(tmp))
        tensors = {name: t.detach().to("cpu", torch.float32).contiguous()
                   for name, t in state.items()}
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (tmp / PROMPT_FILE).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        tmp.chmod(0o755)  # mkdtemp's folder is private; an adapter is a result to share
        for file in tmp.iterdir():
            file.chmod(0o644)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def save_final_state(folder: str | Path, config: RunConfig, method: str, seed: int,
                     state: Mapping[str, torch.Tensor]) -> str:
    """Keep a run's final global ``state``: an adapter folder for a LoRA method; for any other
    method nothing, and the returned line (for the user) says which and why."""
    trains = lookup(method).trains
    if trains is Trains.LORA:
        target = write_adapter_folder(folder, config, state, method, seed)
        return (f"{method} seed {seed}: final adapter in {target} (lpfl predict --adapter "
                f"{target}, or peft.PeftModel.from_pretrained(base, '{target}'))")
    if trains is Trains.FULL:
        return (f"{method} seed {seed}: trains every parameter, so there is no adapter; no "
                "folder written")
    return f"{method} seed {seed}: trains nothing, so there is no adapter; no folder written"


def read_adapter_info(folder: str | Path) -> AdapterInfo:
    """``lpfl_prompt.json`` of an adapter folder; a :class:`ModelError` says what is missing."""
    path = Path(folder)
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, PROMPT_FILE):
        if not (path / name).is_file():
            raise ModelError(f"{path} is not an lpfl adapter folder: {name} is missing (a run "
                             "writes one into its output folder, e.g. OUT/adapter or "
                             "OUT/adapters/lp-fl-seed0)")
    try:
        document = json.loads((path / PROMPT_FILE).read_text(encoding="utf-8"))
        if document.get("format") != FORMAT:
            raise ValueError(f"format {document.get('format')!r}, this lpfl reads {FORMAT}")
        return AdapterInfo.from_dict(document)
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{path / PROMPT_FILE} cannot be read: {exc}") from None


def read_adapter_state(folder: str | Path) -> dict[str, torch.Tensor]:
    """The adapter tensors of a folder, as the wire and ``get_peft_model_state_dict`` name them."""
    path = Path(folder) / ADAPTER_WEIGHTS
    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise ModelError(f"{path} cannot be read: {exc}") from None


def load_adapter_model(folder: str | Path, model_source: str | None = None,
                       device: str = "cpu") -> tuple[PromptModel, AdapterInfo]:
    """The prompt model of an adapter folder: its base model (``model_source`` instead of the
    recorded one, e.g. after moving the files) wrapped by ``PeftModel.from_pretrained``."""
    from peft import PeftModel

    from lpfl.model.loading import load_base_model
    from lpfl.model.prompt import PromptModel

    info = read_adapter_info(folder)
    model = info.model if model_source is None else ModelSettings(
        source=model_source, max_length=info.model.max_length)
    base = load_base_model(model)
    pm = PromptModel(base, info.prompt, model.max_length, device)
    try:
        pm.network = PeftModel.from_pretrained(pm.base.model, str(folder))
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ModelError(f"{folder} does not fit the base model {model.source!r} "
                         f"({type(exc).__name__}: {str(exc)[:300]}); pass the model it was "
                         "trained on") from None
    pm.network.eval()
    return pm, info
