"""Tensor payloads as safetensors bytes: how adapters (or whole models) travel and are counted.

Three encodings, chosen per run: ``fp32``, ``fp16``, and ``int8`` with one symmetric scale per
tensor (stored, exactly, as a hex float in the safetensors metadata). Decoding always yields
float32 tensors. Never pickle: safetensors is a flat header plus raw bytes, safe to parse from an
untrusted peer.
"""

from __future__ import annotations

import functools
import json
import struct
from collections.abc import Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from lpfl.errors import LpflError

ENCODINGS = ("fp32", "fp16", "int8")
_ENCODING_KEY = "lpfl.encoding"
_SCALE_PREFIX = "lpfl.scale."


class PayloadError(LpflError):
    """A tensor payload is not valid safetensors or does not follow lpfl's encoding rules."""


def _int8(tensor: torch.Tensor) -> tuple[torch.Tensor, float]:
    peak = float(tensor.abs().max()) if tensor.numel() else 0.0
    scale = peak / 127.0 if peak > 0.0 else 1.0
    return torch.clamp(torch.round(tensor / scale), -127, 127).to(torch.int8), scale


def encode_tensors(state: Mapping[str, torch.Tensor], encoding: str = "fp32") -> bytes:
    """Serialize float tensors with ``encoding``; the result is what goes on the wire."""
    if encoding not in ENCODINGS:
        raise PayloadError(f"unknown tensor encoding {encoding!r}; use one of {ENCODINGS}")
    tensors: dict[str, torch.Tensor] = {}
    metadata = {_ENCODING_KEY: encoding}
    for name, value in state.items():
        tensor = value.detach().to("cpu", torch.float32).contiguous()
        if encoding == "fp16":
            tensor = tensor.to(torch.float16)
        elif encoding == "int8":
            tensor, scale = _int8(tensor)
            metadata[_SCALE_PREFIX + name] = scale.hex()
        tensors[name] = tensor
    return st_save(tensors, metadata=metadata)


def _metadata(data: bytes) -> dict[str, str]:
    if len(data) < 8:
        raise PayloadError("tensor payload is shorter than a safetensors header")
    (size,) = struct.unpack("<Q", data[:8])
    if size > len(data) - 8:
        raise PayloadError("tensor payload header length runs past the end of the payload")
    try:
        header = json.loads(data[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError(f"tensor payload header is not JSON: {exc}") from None
    meta = header.get("__metadata__", {}) if isinstance(header, dict) else {}
    if not isinstance(meta, dict):
        raise PayloadError("tensor payload metadata is not a string map")
    return {str(k): str(v) for k, v in meta.items()}


def decode_tensors(data: bytes) -> dict[str, torch.Tensor]:
    """Parse a payload made by :func:`encode_tensors` into float32 tensors.

    Raises :class:`PayloadError` (never a lower-level exception) for anything malformed.
    """
    meta = _metadata(data)
    encoding = meta.get(_ENCODING_KEY)
    if encoding not in ENCODINGS:
        raise PayloadError(f"tensor payload has unknown encoding {encoding!r}")
    try:
        raw = st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise PayloadError(f"tensor payload is not valid safetensors: {exc}") from None
    out: dict[str, torch.Tensor] = {}
    for name, tensor in raw.items():
        if encoding == "int8":
            if tensor.dtype != torch.int8 or _SCALE_PREFIX + name not in meta:
                raise PayloadError(f"int8 payload tensor {name!r} lacks int8 data or its scale")
            try:
                scale = float.fromhex(meta[_SCALE_PREFIX + name])
            except ValueError:
                raise PayloadError(f"int8 payload tensor {name!r} has a malformed scale") from None
            out[name] = tensor.to(torch.float32) * scale
        else:
            expected = torch.float16 if encoding == "fp16" else torch.float32
            if tensor.dtype != expected:
                raise PayloadError(f"{encoding} payload tensor {name!r} is {tensor.dtype}")
            out[name] = tensor.to(torch.float32)
    return out


def payload_nbytes(state: Mapping[str, torch.Tensor], encoding: str = "fp32") -> int:
    """Exact size of the serialized payload, as a client would send or receive it.

    For fp32 and fp16 the size depends only on names and shapes, so it is computed once per
    layout (FP-FL states are hundreds of MB); int8 metadata holds per-tensor scales, so int8
    payloads are serialized each time.
    """
    if encoding == "int8":
        return len(encode_tensors(state, encoding))
    return _layout_nbytes(encoding, tuple((n, tuple(t.shape)) for n, t in state.items()))


@functools.lru_cache(maxsize=32)
def _layout_nbytes(encoding: str, layout: tuple[tuple[str, tuple[int, ...]], ...]) -> int:
    return len(encode_tensors({name: torch.zeros(shape) for name, shape in layout}, encoding))
