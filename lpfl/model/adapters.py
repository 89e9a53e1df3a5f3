"""What a method trains and transmits: LoRA adapters (LP-FL) or every parameter (FP-FL).

LP-FL freezes the base model and attaches PEFT LoRA adapters; the adapter tensors
(``get_peft_model_state_dict``) are the only trainable state and the only thing on the wire.
FP-FL trains and exchanges every parameter (tied weights counted once). Both expose the same two
operations, :func:`trainable_state` and :func:`load_trainable_state`, so the federation code does
not care which it is.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

from lpfl.config import LoraSettings
from lpfl.errors import ConfigError, ModelError
from lpfl.model.prompt import PromptModel

MODES = ("lora", "full", "frozen")


def _linear_names(module: torch.nn.Module) -> list[str]:
    return sorted({name.rsplit(".", 1)[-1] for name, m in module.named_modules()
                   if isinstance(m, torch.nn.Linear)})


def attach_lora(pm: PromptModel, settings: LoraSettings) -> None:
    """Freeze the base model and wrap it with LoRA adapters on ``settings.target_modules``."""
    available = _linear_names(pm.base.model)
    missing = [t for t in settings.target_modules if t not in available]
    if missing:
        raise ConfigError(f"lora.target_modules {missing} are not linear layers of this model; "
                          f"choose from {available}")
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=list(settings.target_modules), bias="none")
    pm.network = get_peft_model(pm.base.model, config)


def set_mode(pm: PromptModel, mode: str, lora: LoraSettings) -> None:
    """Make ``pm`` train LoRA adapters only (``lora``), every parameter (``full``) or nothing."""
    if mode not in MODES:
        raise ValueError(f"unknown training mode {mode!r}; use one of {MODES}")
    if mode == "lora":
        attach_lora(pm, lora)
        return
    for param in pm.network.parameters():
        param.requires_grad_(mode == "full")


def trainable_state(pm: PromptModel) -> dict[str, torch.Tensor]:
    """A detached copy of the state this method trains and transmits."""
    if isinstance(pm.network, PeftModel):
        state = get_peft_model_state_dict(pm.network)
    else:
        state = {n: p for n, p in pm.network.named_parameters() if p.requires_grad}
    return {name: t.detach().to("cpu", copy=True) for name, t in state.items()}


def _check_same(current: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> None:
    if set(current) != set(state):
        missing = sorted(set(current) - set(state))[:3]
        extra = sorted(set(state) - set(current))[:3]
        raise ModelError(f"state does not fit the model: missing {missing}, unexpected {extra}")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(current[name].shape):
            raise ModelError(f"state tensor {name} has shape {tuple(tensor.shape)}, the model "
                             f"expects {tuple(current[name].shape)}")


def load_trainable_state(pm: PromptModel, state: Mapping[str, torch.Tensor]) -> None:
    """Overwrite the trainable state in place (after checking names and shapes match exactly)."""
    if isinstance(pm.network, PeftModel):
        _check_same(get_peft_model_state_dict(pm.network), state)
        set_peft_model_state_dict(pm.network, dict(state))
        return
    params = {n: p for n, p in pm.network.named_parameters() if p.requires_grad}
    _check_same(params, state)
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor)
