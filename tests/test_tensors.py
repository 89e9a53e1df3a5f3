import pytest
import torch

from lpfl.tensors import ENCODINGS, PayloadError, decode_tensors, encode_tensors, payload_nbytes


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_round_trip_within_encoding_precision(encoding: str) -> None:
    torch.manual_seed(0)
    state = {"lora_A": torch.randn(8, 64), "lora_B": torch.randn(64, 8) * 1e-3}
    back = decode_tensors(encode_tensors(state, encoding))
    tol = {"fp32": 0.0, "fp16": 1e-3, "int8": 1.0 / 127}[encoding]
    for name, tensor in state.items():
        assert back[name].dtype == torch.float32
        err = (back[name] - tensor).abs().max() / tensor.abs().max()
        assert float(err) <= tol + 1e-7


def test_sizes_shrink_with_encoding() -> None:
    state = {"w": torch.randn(256, 256)}
    fp32, fp16, int8 = (payload_nbytes(state, e) for e in ENCODINGS)
    assert fp32 > 256 * 256 * 4 and fp16 < fp32 * 0.51 and int8 < fp32 * 0.26


@pytest.mark.parametrize("payload", [b"", b"\x01", b"\xff" * 8 + b"{}", b"\x02\x00\x00\x00"
                                     b"\x00\x00\x00\x00{}"])
def test_garbage_is_a_payload_error(payload: bytes) -> None:
    with pytest.raises(PayloadError):
        decode_tensors(payload)


def test_unknown_encoding_rejected() -> None:
    with pytest.raises(PayloadError, match="unknown tensor encoding"):
        encode_tensors({"w": torch.zeros(1)}, "bf8")
