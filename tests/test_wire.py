"""The wire schema: golden bytes both ways, framing into chunks, limits and malformed input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lpfl import wire

CAPS = {"backend": "torch", "cpu_arch": "aarch64", "memory_bytes": 4096,
        "runtime": {"python": "3.11.7", "torch": "2.13.0"}}
KEY, KEY2, SEALED = bytes(range(32)), bytes(range(32, 64)), bytes(range(92))
B64 = b"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
B64_2 = b"ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="

GOLDEN: list[tuple[wire.Message, bytes]] = [
    (wire.Hello(0, "edge-1", CAPS),
     b'\x00\x00\x00\xd8{"body":{"capabilities":{"backend":"torch","cpu_arch":"aarch64",'
     b'"memory_bytes":4096,"runtime":{"python":"3.11.7","torch":"2.13.0"}}},'
     b'"client_id":"edge-1","payload_bytes":0,"round":0,"schema_version":1,"type":"hello"}'),
    (wire.Task(2, "edge-1", b"ST", {"local_steps": 8, "lr": 0.0005}, "fp16", 30.0),
     b'\x00\x00\x00\xb0{"body":{"deadline_s":30.0,"settings":{"local_steps":8,"lr":0.0005},'
     b'"update_encoding":"fp16"},"client_id":"edge-1","payload_bytes":2,"round":2,'
     b'"schema_version":1,"type":"task"}ST'),
    (wire.Update(2, "edge-1", b"ST", 12, {"train_loss": 0.25}),
     b'\x00\x00\x00\x8e{"body":{"metrics":{"train_loss":0.25},"num_examples":12},'
     b'"client_id":"edge-1","payload_bytes":2,"round":2,"schema_version":1,"type":"update"}ST'),
    (wire.Error(2, "edge-1", wire.E_STALE_ROUND, "round 1 is closed"),
     b'\x00\x00\x00\x8f{"body":{"code":"stale_round","reason":"round 1 is closed"},'
     b'"client_id":"edge-1","payload_bytes":0,"round":2,"schema_version":1,"type":"error"}'),
    (wire.Ack(2, "edge-1", wire.UPDATE, {"clipped": False}),
     b'\x00\x00\x00\x84{"body":{"detail":{"clipped":false},"of":"update"},'
     b'"client_id":"edge-1","payload_bytes":0,"round":2,"schema_version":1,"type":"ack"}'),
    (wire.Bye(3, "edge-1", "the run is finished"),
     b'\x00\x00\x00z{"body":{"reason":"the run is finished"},"client_id":"edge-1",'
     b'"payload_bytes":0,"round":3,"schema_version":1,"type":"bye"}'),
    # Secure aggregation (docs/protocol.md §12).
    (wire.Task(2, "edge-1", b"ST", {"lr": 0.5}, "fp32", 30.0,
               wire.MaskingParams(2, 20, 1.0, 1000, 0.5, 0.0)),
     b'\x00\x00\x01\x15{"body":{"deadline_s":30.0,"secure_aggregation":{"clip_norm":0.5,'
     b'"clip_range":1.0,"max_weight":1000,"noise_std":0.0,"scale_bits":20,"threshold":2},'
     b'"settings":{"lr":0.5},"update_encoding":"fp32"},"client_id":"edge-1","payload_bytes":2,'
     b'"round":2,"schema_version":1,"type":"task"}ST'),
    (wire.AdvertiseKeys(2, "edge-1", KEY, KEY2),
     b'\x00\x00\x00\xdc{"body":{"cipher_key":"' + B64 + b'","mask_key":"' + B64_2 + b'"},'
     b'"client_id":"edge-1","payload_bytes":0,"round":2,"schema_version":1,'
     b'"type":"advertise_keys"}'),
    (wire.PublicKeys(2, "edge-1", {"edge-1": (KEY, KEY2), "edge-2": (KEY2, KEY)}),
     b'\x00\x00\x01n{"body":{"keys":{"edge-1":{"cipher_key":"' + B64 + b'","mask_key":"'
     + B64_2 + b'"},"edge-2":{"cipher_key":"' + B64_2 + b'","mask_key":"' + B64 + b'"}}},'
     b'"client_id":"edge-1","payload_bytes":0,"round":2,"schema_version":1,'
     b'"type":"public_keys"}'),
    (wire.ShareKeys(2, "edge-1", {"edge-2": SEALED}),
     b'\x00\x00\x00\xf5{"body":{"shares":{"edge-2":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd'
     b'Hh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+P0BBQkNERUZHSElKS0xNTk9QUVJTVFVWV1hZWls="}},'
     b'"client_id":"edge-1","payload_bytes":0,"round":2,"schema_version":1,"type":"share_keys"}'),
    (wire.MaskedInput(2, "edge-1", b"ST", {"train_loss": 0.25}),
     b'\x00\x00\x00\x82{"body":{"metrics":{"train_loss":0.25}},"client_id":"edge-1",'
     b'"payload_bytes":2,"round":2,"schema_version":1,"type":"masked_input"}ST'),
    (wire.Unmask(2, "edge-1", ("edge-1", "edge-2"), ("edge-3",)),
     b'\x00\x00\x00\x93{"body":{"dropped":["edge-3"],"survivors":["edge-1","edge-2"]},'
     b'"client_id":"edge-1","payload_bytes":0,"round":2,"schema_version":1,"type":"unmask"}'),
    (wire.UnmaskShares(2, "edge-1", {"edge-1": KEY, "edge-2": KEY2}, {"edge-3": KEY}),
     b'\x00\x00\x016{"body":{"mask_key_shares":{"edge-3":"' + B64 + b'"},'
     b'"self_mask_shares":{"edge-1":"' + B64 + b'","edge-2":"' + B64_2 + b'"}},'
     b'"client_id":"edge-1","payload_bytes":0,"round":2,"schema_version":1,'
     b'"type":"unmask_shares"}'),
]


def frame(header: bytes, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(header)) + header + payload


@pytest.mark.parametrize(("message", "golden"), GOLDEN, ids=lambda x: getattr(x, "TYPE", ""))
def test_golden_bytes_both_ways(message: wire.Message, golden: bytes) -> None:
    assert message.serialize() == golden
    assert wire.parse(golden) == message
    assert type(message).parse(golden) == message
    assert b"".join(message.frames()) == golden


def test_every_type_has_a_golden() -> None:
    assert sorted({m.TYPE for m, _ in GOLDEN}) == sorted(wire.MESSAGE_TYPES)


def test_typed_parse_refuses_another_type() -> None:
    with pytest.raises(wire.WireError) as info:
        wire.Update.parse(GOLDEN[0][1])
    assert info.value.code == wire.E_UNEXPECTED


def test_large_payload_streams_in_bounded_chunks() -> None:
    payload = bytes(range(256)) * 40
    message = wire.Update(4, "c", payload, 3)
    frames = [bytes(f) for f in message.frames(chunk_bytes=1000)]
    assert len(frames) == 11
    assert all(len(f) <= 1000 for f in frames[1:])
    assert b"".join(frames) == message.serialize()
    reader = wire.FrameReader({wire.UPDATE: len(payload)})
    for f in frames[:-1]:
        assert reader.feed(f) is None
        assert reader.pending == wire.Envelope(wire.UPDATE, 4, "c")
    assert reader.feed(frames[-1]) == message
    assert reader.pending is None


def test_limit_is_enforced_on_the_first_frame_before_payload() -> None:
    first = bytes(next(wire.Update(1, "c", b"x" * 5000, 1).frames(chunk_bytes=100)))
    reader = wire.FrameReader({wire.UPDATE: 4999})
    with pytest.raises(wire.WireError) as info:
        reader.feed(first)
    assert info.value.code == wire.E_TOO_LARGE
    assert reader.pending is None


def test_discarded_message_is_skipped_and_the_stream_continues() -> None:
    refused = list(wire.Update(1, "c", b"y" * 300, 1).frames(chunk_bytes=100))
    reader = wire.FrameReader({wire.UPDATE: 1000})
    assert reader.feed(bytes(refused[0])) is None
    reader.discard()
    assert [reader.feed(bytes(f)) for f in refused[1:]] == [None, None]
    bye = wire.Bye(1, "c", "done")
    assert reader.feed(bye.serialize()) == bye


def test_frames_rejects_chunk_sizes_out_of_range() -> None:
    with pytest.raises(ValueError, match="chunk_bytes"):
        next(wire.Bye(1, "c").frames(chunk_bytes=0))


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"\x00\x00", wire.E_BAD_FRAME),
        (b"\x00\x00\x00\x00", wire.E_BAD_FRAME),
        (b"\xff\xff\xff\xff{}", wire.E_BAD_FRAME),
        (b"\x00\x00\x00\x10{}", wire.E_BAD_FRAME),
        (frame(b"\xff\xfe"), wire.E_BAD_FRAME),
        (frame(b"[1, 2]"), wire.E_BAD_FRAME),
        (frame(b'{"round": NaN}'), wire.E_BAD_FRAME),
        (frame(b'{"schema_version":2,"type":"bye","round":0,"client_id":"c"}'),
         wire.E_UNSUPPORTED_SCHEMA),
        (frame(b'{"schema_version":1,"type":"pickle","round":0,"client_id":"c"}'),
         wire.E_BAD_MESSAGE),
        (frame(b'{"schema_version":1,"type":"bye","round":-1,"client_id":"c"}'),
         wire.E_BAD_MESSAGE),
        (frame(b'{"schema_version":1,"type":"bye","round":0,"client_id":"../etc"}'),
         wire.E_BAD_MESSAGE),
        (frame(b'{"schema_version":1,"type":"bye","round":0,"client_id":"c",'
               b'"payload_bytes":0,"body":[]}'), wire.E_BAD_MESSAGE),
        (frame(b'{"schema_version":1,"type":"bye","round":0,"client_id":"c",'
               b'"payload_bytes":0,"body":{}}'), wire.E_BAD_MESSAGE),
        (frame(b'{"schema_version":1,"type":"bye","round":0,"client_id":"c",'
               b'"payload_bytes":3,"body":{"reason":""}}', b"abc"), wire.E_TOO_LARGE),
        (frame(b'{"schema_version":1,"type":"update","round":1,"client_id":"c",'
               b'"payload_bytes":0,"body":{"num_examples":1,"metrics":{}}}'), wire.E_BAD_MESSAGE),
        (frame(b'{"schema_version":1,"type":"update","round":1,"client_id":"c",'
               b'"payload_bytes":1,"body":{"num_examples":true,"metrics":{}}}', b"x"),
         wire.E_BAD_MESSAGE),
        (frame(b'{"schema_version":1,"type":"update","round":1,"client_id":"c",'
               b'"payload_bytes":1,"body":{"num_examples":1,"metrics":{"a":"b"}}}', b"x"),
         wire.E_BAD_MESSAGE),
        (frame(b'{"schema_version":1,"type":"update","round":1,"client_id":"c",'
               b'"payload_bytes":1,"body":{"num_examples":1,"metrics":{}}}', b"xy"),
         wire.E_BAD_FRAME),
        (frame(b'{"schema_version":1,"type":"update","round":1,"client_id":"c",'
               b'"payload_bytes":2,"body":{"num_examples":1,"metrics":{}}}', b"x"),
         wire.E_BAD_FRAME),
        (frame(b'{"schema_version":1,"type":"error","round":1,"client_id":"c",'
               b'"payload_bytes":0,"body":{"code":"oops","reason":""}}'), wire.E_BAD_MESSAGE),
        (frame(b'{"schema_version":1,"type":"task","round":1,"client_id":"c","payload_bytes":1,'
               b'"body":{"settings":{},"update_encoding":"fp8","deadline_s":1}}', b"x"),
         wire.E_BAD_MESSAGE),
    ],
)
def test_malformed_input_raises_wire_error_with_a_code(data: bytes, code: str) -> None:
    with pytest.raises(wire.WireError) as info:
        wire.parse(data)
    assert info.value.code == code


def test_empty_continuation_frame_is_refused_and_reader_resets() -> None:
    reader = wire.FrameReader({wire.UPDATE: 10})
    assert reader.feed(bytes(next(wire.Update(1, "c", b"abcd", 1).frames(chunk_bytes=2)))) is None
    with pytest.raises(wire.WireError):
        reader.feed(b"")
    assert reader.pending is None


@pytest.mark.parametrize(
    "message",
    [
        wire.Hello(0, "c", {**CAPS, "memory_bytes": -1}),
        wire.Hello(0, "c", {k: v for k, v in CAPS.items() if k != "backend"}),
        wire.Update(1, "c", b"x", True),
        wire.Update(0, "c", b"x", 1),
        wire.Update(1, "c", b"x", 1, {"loss": float("nan")}),
        wire.Update(1, "c", b"", 1),
        wire.Task(1, "c", b"x", {"f": float("inf")}, "fp32", 1.0),
        wire.Task(1, "c", b"x", {}, "fp32", 0.0),
        wire.Ack(1, "c", "nothing"),
        wire.Bye(1, "c", "x" * (wire.MAX_REASON_CHARS + 1)),
        wire.Bye(1, "", "no id"),
    ],
)
def test_invalid_fields_are_refused_before_sending(message: wire.Message) -> None:
    with pytest.raises(wire.WireError):
        message.serialize()


def test_error_of_cuts_long_reasons() -> None:
    error = wire.Error.of(1, "c", wire.E_INVALID_UPDATE, "z" * 5000)
    assert len(error.reason) == wire.MAX_REASON_CHARS
    assert wire.parse(error.serialize()) == error


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_random_bytes_only_ever_raise_wire_error(data: bytes) -> None:
    try:
        wire.parse(data)
    except wire.WireError as exc:
        assert exc.code in wire.ERROR_CODES


@given(st.integers(0, len(GOLDEN) - 1), st.data())
@settings(max_examples=300, deadline=None)
def test_mutated_golden_messages_parse_or_raise_wire_error(index: int, data: st.DataObject) -> None:
    golden = bytearray(GOLDEN[index][1])
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(golden) - 1))
        golden[position] = data.draw(st.integers(0, 255))
    try:
        message = wire.parse(bytes(golden))
    except wire.WireError:
        return
    assert wire.parse(message.serialize()) == message


@given(
    round_number=st.integers(1, wire.MAX_ROUND),
    client_id=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True),
    payload=st.binary(min_size=1, max_size=2000),
    num_examples=st.integers(1, wire.MAX_EXAMPLES),
    metrics=st.dictionaries(st.text(max_size=8), st.floats(allow_nan=False, allow_infinity=False),
                            max_size=4),
    chunk=st.integers(1, 700),
)
@settings(max_examples=200, deadline=None)
def test_updates_round_trip_through_any_chunking(
    round_number: int, client_id: str, payload: bytes, num_examples: int,
    metrics: dict[str, float], chunk: int,
) -> None:
    message = wire.Update(round_number, client_id, payload, num_examples, metrics)
    reader = wire.FrameReader({wire.UPDATE: len(payload)})
    results = [reader.feed(bytes(f)) for f in message.frames(chunk_bytes=chunk)]
    assert results[-1] == message
    assert all(r is None for r in results[:-1])
