"""Secure aggregation of a round's updates: the server learns only their sum (no I/O).

The protocol is Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine
Learning" (CCS 2017), in its semi-honest form (no signatures, no consistency round), after
training: each sampled client trains, then

1. **advertise keys**: sends two fresh X25519 public keys (``advertise_keys``); the server sends
   everyone the list of those that arrived (``public_keys``);
2. **share keys**: splits its mask private key and a fresh self-mask seed into ``t``-of-``n``
   Shamir shares, seals each peer's two shares to that peer (``share_keys``); the server
   forwards to each client the shares addressed to it;
3. **masked input**: adds to its quantized, weighted update a mask from its seed and, for every
   peer that shared keys, a pairwise mask agreed with that peer, with opposite signs on the two
   sides, so that pairwise masks cancel in the sum (``masked_input``);
4. **unmasking**: told which peers' inputs arrived (``unmask``), reveals its shares of their
   self-mask seeds and of the mask keys of the peers that shared keys but sent no input
   (``unmask_shares``). With ``t`` answers the server rebuilds those secrets, removes the
   self masks and the dropped peers' pairwise masks, and is left with the sum.

The primitives all come from maintained libraries, none is written here: X25519 key agreement,
HKDF-SHA256, ChaCha20-Poly1305 (sealing shares) and ChaCha20 (expanding a key into a mask) from
``cryptography``; Shamir secret sharing over GF(2¹²⁸) from pycryptodome
(``Crypto.Protocol.SecretSharing.Shamir``; a 32-byte secret is shared as two 16-byte halves).
The masks are ChaCha20 key streams, a cryptographic PRG: a mask must be indistinguishable from
uniform, which a statistical generator such as numpy's Philox does not promise.

**Quantization.** Masks cancel exactly only in a ring: every value travels as a ``uint32``
modulo 2³². A client's change from the global state is (optionally) L2-clipped to
``clip_norm``, clamped to ``[-clip_range, clip_range]`` per coordinate, multiplied by its weight
``w = min(num_examples, max_weight)``, given its share of the noise (differential privacy), and
stored as ``round(v × 2**scale_bits)``; the weight itself is the vector's last element, so the
sum holds ``Σ w·Δ`` and ``Σ w`` and the server divides. :func:`scale_bits` picks the largest
scale at which the sum of ``n`` such vectors cannot wrap around.

:class:`MaskingClient` is one client's side of one round and :class:`MaskedSum` the server's;
:class:`lpfl.protocol.RoundMachine` runs the server side, ``lpfl.edge_client`` and
:func:`lpfl.rounds.drive` the clients'. The server keeps the running sum of masked inputs, never
one client's input: a masked input is the update plus a uniformly random mask that only the
sum, and the secrets of dropped clients, can remove.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from Crypto.Protocol.SecretSharing import Shamir
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from safetensors import SafetensorError
from safetensors.numpy import load as np_load
from safetensors.numpy import save as np_save

from lpfl import wire
from lpfl.errors import LpflError

State = Mapping[str, torch.Tensor]

RING_BITS = 32
"""Values are summed modulo ``2**RING_BITS`` (``uint32``)."""
_RING = 1 << RING_BITS
_HALF = 1 << (RING_BITS - 1)
_VECTOR = "masked_input"
_ENCODING = "ring32"


class SecAggError(LpflError):
    """A secure-aggregation message or step cannot be used; the message says why. On the server
    it ends the sender's turn (or fails the attempt); on a client it is reported as
    ``training_failed``."""


# --- quantization -----------------------------------------------------------------------------


def scale_bits(sampled: int, max_weight: int, clip_range: float) -> int:
    """The largest ``k`` such that the sum of ``sampled`` vectors whose values are at most
    ``max_weight × clip_range`` in magnitude, each rounded to a multiple of ``2**-k``, stays
    inside ``(-2**31, 2**31)``; at most 30. Raises :class:`ValueError` when even ``k = 0``
    does not fit."""
    room = (_HALF - 1 - sampled) / (sampled * max_weight * clip_range)
    if room < 1:
        raise ValueError(f"{sampled} clients × max_weight {max_weight} × clip_range "
                         f"{clip_range} do not fit a {RING_BITS}-bit ring")
    return min(30, math.floor(math.log2(room)))


def quantize(values: np.ndarray, bits: int) -> np.ndarray:
    """``round(values × 2**bits)`` as ``uint32`` modulo 2³² (negative values wrap)."""
    scaled = np.rint(np.asarray(values, dtype=np.float64) * float(1 << bits)).astype(np.int64)
    return (scaled & (_RING - 1)).astype(np.uint32)


def dequantize(ring: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of :func:`quantize` for a value in ``(-2**31, 2**31)``: float64."""
    signed = ring.astype(np.int64)
    signed[signed >= _HALF] -= _RING
    return signed.astype(np.float64) / float(1 << bits)


def flatten(state: State, names: Sequence[str]) -> np.ndarray:
    """The tensors of ``state`` named ``names``, flattened and concatenated, as float64."""
    return np.concatenate([state[n].detach().to("cpu", torch.float64).reshape(-1).numpy()
                           for n in names])


def vector_length(reference: State) -> int:
    """Values in a masked vector for ``reference``: every parameter, plus the weight."""
    return sum(t.numel() for t in reference.values()) + 1


def client_input(params: wire.MaskingParams, reference: State, state: State, num_examples: int,
                 rng: np.random.Generator | None = None) -> np.ndarray:
    """The ring vector a client masks: its change from ``reference``, clipped and weighted as
    ``params`` say (the module docstring), plus its noise, then its weight."""
    names = sorted(reference)
    delta = flatten(state, names) - flatten(reference, names)
    norm = float(np.linalg.norm(delta))
    if params.clip_norm > 0 and norm > params.clip_norm:
        delta *= params.clip_norm / norm
    weight = min(int(num_examples), params.max_weight)
    bound = params.clip_range * weight
    values = np.clip(delta, -params.clip_range, params.clip_range) * weight
    if params.noise_std > 0:
        noise_rng = rng if rng is not None else np.random.default_rng()
        values = np.clip(values + noise_rng.normal(0.0, params.noise_std, values.size),
                         -bound, bound)
    ring = quantize(values, params.scale_bits)
    return np.append(ring, np.uint32(weight))


def unflatten(values: np.ndarray, reference: State) -> dict[str, torch.Tensor]:
    """``values`` (float64, :func:`flatten`'s order) cut back into ``reference``'s tensors."""
    out, start = {}, 0
    for name in sorted(reference):
        tensor = reference[name]
        chunk = values[start : start + tensor.numel()]
        out[name] = torch.from_numpy(chunk.copy()).reshape(tensor.shape)
        start += tensor.numel()
    return out


def encode_vector(vector: np.ndarray) -> bytes:
    """A ring vector as a ``masked_input`` payload: safetensors, one ``U32`` tensor."""
    return np_save({_VECTOR: np.ascontiguousarray(vector, dtype=np.uint32)},
                   metadata={"lpfl.encoding": _ENCODING})


def decode_vector(payload: bytes, length: int) -> np.ndarray:
    """Inverse of :func:`encode_vector`; :class:`SecAggError` unless it holds exactly one
    ``uint32`` vector of ``length`` values."""
    try:
        tensors = np_load(payload)
    except (SafetensorError, ValueError) as exc:
        raise SecAggError(f"the masked input is not a safetensors payload: {exc}") from None
    vector = tensors.get(_VECTOR)
    if set(tensors) != {_VECTOR} or vector is None or vector.dtype != np.uint32 \
            or vector.shape != (length,):
        found = {n: (str(t.dtype), t.shape) for n, t in tensors.items()}
        raise SecAggError(f"the masked input must be one uint32 tensor {_VECTOR!r} of "
                          f"{length} values, got {found}")
    return vector


# --- primitives (each one call into cryptography or pycryptodome) ----------------------------


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def _public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def _agree(private: X25519PrivateKey, peer_public: bytes, info: bytes) -> bytes:
    """HKDF-SHA256 of the X25519 shared secret; :class:`SecAggError` for an invalid peer key."""
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:
        raise SecAggError(f"a peer's public key is unusable: {exc}") from None
    return _hkdf(shared, info)


def prg(key: bytes, length: int) -> np.ndarray:
    """``length`` uniform ``uint32`` values: the ChaCha20 key stream of ``key`` (zero nonce: a
    key is used for one stream only)."""
    stream = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    return np.frombuffer(stream.update(bytes(4 * length)), dtype="<u4").astype(np.uint32)


def _label(kind: str, round_number: int, *ids: str) -> bytes:
    return "|".join(("lpfl-secagg", kind, str(round_number), *ids)).encode()


def split_secret(secret: bytes, threshold: int, count: int) -> list[bytes]:
    """Shamir ``threshold``-of-``count`` shares of a 32-byte secret; share ``i`` (0-based) is
    for index ``i + 1``: 32 bytes, the shares of both 16-byte halves."""
    low = Shamir.split(threshold, count, secret[:16], ssss=False)
    high = Shamir.split(threshold, count, secret[16:], ssss=False)
    return [a + b for (_, a), (_, b) in zip(low, high, strict=True)]


def combine_secret(shares: Mapping[int, bytes], threshold: int) -> bytes:
    """The secret from at least ``threshold`` shares keyed by their 1-based index (exactly
    ``threshold`` are used: pycryptodome's ``combine`` wants no more)."""
    if len(shares) < threshold:
        raise SecAggError(f"{len(shares)} shares cannot rebuild a secret shared "
                          f"{threshold}-of-n")
    chosen = sorted(shares.items())[:threshold]
    low = Shamir.combine([(i, s[:16]) for i, s in chosen], ssss=False)
    high = Shamir.combine([(i, s[16:]) for i, s in chosen], ssss=False)
    return bytes(low) + bytes(high)


def _seal(key: bytes, plaintext: bytes, label: bytes) -> bytes:
    nonce = os.urandom(12)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, label)


def _open(key: bytes, sealed: bytes, label: bytes) -> bytes:
    try:
        return ChaCha20Poly1305(key).decrypt(sealed[:12], sealed[12:], label)
    except InvalidTag:
        raise SecAggError("a sealed share does not open: it was altered or is not for this "
                          "client") from None


def _pair_mask(key: bytes, me: str, peer: str, length: int) -> np.ndarray:
    """The pairwise mask as ``me`` adds it: the key stream, negated on the larger id's side."""
    mask = prg(key, length)
    return mask if me < peer else (np.uint32(0) - mask).astype(np.uint32)


def _indices(roster: Sequence[str]) -> dict[str, int]:
    return {cid: i + 1 for i, cid in enumerate(sorted(roster))}


def digest(vector: np.ndarray) -> str:
    """A short fingerprint of a vector, for logs and tests."""
    return hashlib.sha256(np.ascontiguousarray(vector).tobytes()).hexdigest()[:16]


# --- one client's side ------------------------------------------------------------------------


class MaskingClient:
    """One client's side of one secure-aggregation round, from its trained state on: feed it the
    server's messages (:meth:`respond`) and send what it returns.

    The vector to mask is computed at once (:func:`client_input`) and the trained state is not
    kept. :meth:`respond` raises :class:`SecAggError` for a message that breaks the protocol
    (a wrong round, a key list without this client's keys, shares that do not open, an
    ``unmask`` that does not account for every peer or asks twice): the client must then
    report the round as failed rather than answer.
    """

    def __init__(self, client_id: str, round_number: int, params: wire.MaskingParams,
                 reference: State, state: State, num_examples: int,
                 metrics: Mapping[str, float], rng: np.random.Generator | None = None) -> None:
        self.client_id = client_id
        self.round = round_number
        self.params = params
        self._input: np.ndarray | None = client_input(params, reference, state, num_examples,
                                                      rng)
        self._metrics = dict(metrics)
        self._cipher_key = X25519PrivateKey.generate()
        self._mask_key = X25519PrivateKey.generate()
        self._seed = os.urandom(32)
        self._roster: dict[str, tuple[bytes, bytes]] = {}
        self._peers: frozenset[str] = frozenset()
        self._seed_shares: dict[str, bytes] = {}
        self._key_shares: dict[str, bytes] = {}
        self._unmasked = False

    def advertise(self) -> wire.AdvertiseKeys:
        return wire.AdvertiseKeys(self.round, self.client_id, _public(self._cipher_key),
                                  _public(self._mask_key))

    def respond(self, message: wire.Message) -> wire.Message:
        """The reply to one of the server's secure-aggregation messages."""
        if message.round != self.round:
            raise SecAggError(f"a {message.TYPE} for round {message.round}, this client masks "
                              f"round {self.round}")
        if isinstance(message, wire.PublicKeys):
            return self._share(message)
        if isinstance(message, wire.ShareKeys):
            return self._masked(message)
        if isinstance(message, wire.Unmask):
            return self._unmask(message)
        raise SecAggError(f"a client does not answer {message.TYPE}")

    def _share(self, message: wire.PublicKeys) -> wire.ShareKeys:
        if self._roster:
            raise SecAggError("the server sent the key list twice")
        mine = (_public(self._cipher_key), _public(self._mask_key))
        if message.keys.get(self.client_id) != mine:
            raise SecAggError("the key list does not hold this client's keys")
        if len(message.keys) < self.params.threshold:
            raise SecAggError(f"the key list has {len(message.keys)} clients, fewer than the "
                              f"threshold {self.params.threshold}")
        self._roster = dict(message.keys)
        index = _indices(list(self._roster))
        count = len(self._roster)
        key_shares = split_secret(self._mask_key.private_bytes_raw(), self.params.threshold,
                                  count)
        seed_shares = split_secret(self._seed, self.params.threshold, count)
        sealed = {}
        for peer, (cipher, _) in self._roster.items():
            i = index[peer] - 1
            if peer == self.client_id:
                self._key_shares[peer], self._seed_shares[peer] = key_shares[i], seed_shares[i]
                continue
            label = _label("share", self.round, self.client_id, peer)
            key = _agree(self._cipher_key, cipher, label)
            sealed[peer] = _seal(key, key_shares[i] + seed_shares[i], label)
        return wire.ShareKeys(self.round, self.client_id, sealed)

    def _masked(self, message: wire.ShareKeys) -> wire.MaskedInput:
        if not self._roster or self._input is None:
            raise SecAggError("shares arrived before the key list, or after the masked input")
        unknown = sorted(set(message.shares) - set(self._roster))
        if unknown:
            raise SecAggError(f"shares from clients not in the key list: {unknown[:3]}")
        peers = frozenset(message.shares) | {self.client_id}
        if len(peers) < self.params.threshold:
            raise SecAggError(f"{len(peers)} clients shared keys, fewer than the threshold "
                              f"{self.params.threshold}")
        for sender, sealed in message.shares.items():
            label = _label("share", self.round, sender, self.client_id)
            key = _agree(self._cipher_key, self._roster[sender][0], label)
            opened = _open(key, sealed, label)
            self._key_shares[sender] = opened[: wire.KEY_BYTES]
            self._seed_shares[sender] = opened[wire.KEY_BYTES :]
        self._peers = peers
        vector, self._input = self._input, None
        length = vector.size
        vector = vector + prg(_hkdf(self._seed, _label("self-mask", self.round)), length)
        for peer in sorted(peers - {self.client_id}):
            key = _agree(self._mask_key, self._roster[peer][1], _label("mask", self.round))
            vector = vector + _pair_mask(key, self.client_id, peer, length)
        return wire.MaskedInput(self.round, self.client_id, encode_vector(vector), self._metrics)

    def _unmask(self, message: wire.Unmask) -> wire.UnmaskShares:
        if not self._peers or self._unmasked:
            raise SecAggError("unmask arrived before the masked input, or a second time")
        survivors, dropped = set(message.survivors), set(message.dropped)
        if self.client_id not in survivors:
            raise SecAggError("unmask does not count this client's input as received")
        if survivors | dropped != self._peers:
            raise SecAggError("unmask does not account for exactly the clients that shared keys")
        if len(survivors) < self.params.threshold:
            raise SecAggError(f"only {len(survivors)} inputs arrived, fewer than the threshold "
                              f"{self.params.threshold}: revealing would expose them")
        self._unmasked = True
        return wire.UnmaskShares(self.round, self.client_id,
                                 {cid: self._seed_shares[cid] for cid in sorted(survivors)},
                                 {cid: self._key_shares[cid] for cid in sorted(dropped)})


# --- the server's side ------------------------------------------------------------------------


@dataclass(frozen=True)
class Unmasked:
    """What unmasking yields: ``Σ w·Δ`` per coordinate (float64) and ``Σ w``."""

    weighted_sum: np.ndarray
    total_weight: int

    def mean_state(self, reference: State) -> dict[str, torch.Tensor]:
        """``reference`` plus the weighted mean change, as float32 tensors."""
        mean = self.weighted_sum / self.total_weight
        delta = unflatten(mean, reference)
        return {name: (reference[name].double() + delta[name]).to(torch.float32)
                for name in sorted(reference)}


class MaskedSum:
    """The server's side of one secure-aggregation attempt (no I/O): the steps' bookkeeping and
    the running sum of masked inputs.

    Each ``add_*`` method checks one client's message for the current step and raises
    :class:`SecAggError` if it cannot be used; each ``*_messages`` method closes a step and
    returns what to send to whom. What it keeps: public keys, sealed shares until they are
    forwarded, the ids of each step's participants, the sum of masked inputs modulo 2³², and
    revealed shares. Never a client's input: each masked input is added to the sum and dropped.
    """

    def __init__(self, round_number: int, params: wire.MaskingParams, length: int) -> None:
        self.round = round_number
        self.params = params
        self.length = length
        self.keys: dict[str, tuple[bytes, bytes]] = {}
        self._sealed: dict[str, dict[str, bytes]] = {}
        self.sharers: frozenset[str] = frozenset()
        self.total = np.zeros(length, dtype=np.uint32)
        self.inputs: set[str] = set()
        self._revealed: dict[str, wire.UnmaskShares] = {}

    # step 1
    def add_keys(self, message: wire.AdvertiseKeys) -> None:
        if message.cipher_key == message.mask_key:
            raise SecAggError("the cipher and mask keys must differ")
        self.keys[message.client_id] = (message.cipher_key, message.mask_key)

    def key_messages(self) -> list[wire.PublicKeys]:
        return [wire.PublicKeys(self.round, cid, dict(self.keys)) for cid in sorted(self.keys)]

    # step 2
    def add_shares(self, message: wire.ShareKeys) -> None:
        expected = set(self.keys) - {message.client_id}
        if set(message.shares) != expected:
            missing, extra = sorted(expected - set(message.shares)), sorted(
                set(message.shares) - expected)
            raise SecAggError(f"shares must go to every other client of the key list: missing "
                              f"{missing[:3]}, unexpected {extra[:3]}")
        self._sealed[message.client_id] = dict(message.shares)

    def share_messages(self) -> list[wire.ShareKeys]:
        self.sharers = frozenset(self._sealed)
        out = [wire.ShareKeys(self.round, cid,
                              {sender: shares[cid] for sender, shares in self._sealed.items()
                               if sender != cid})
               for cid in sorted(self.sharers)]
        self._sealed = {}
        return out

    # step 3
    def add_input(self, message: wire.MaskedInput) -> None:
        vector = decode_vector(message.vector, self.length)
        self.total += vector
        self.inputs.add(message.client_id)

    def unmask_messages(self) -> list[wire.Unmask]:
        survivors = tuple(sorted(self.inputs))
        dropped = tuple(sorted(self.sharers - self.inputs))
        return [wire.Unmask(self.round, cid, survivors, dropped) for cid in survivors]

    # step 4
    def add_revealed(self, message: wire.UnmaskShares) -> None:
        dropped = self.sharers - self.inputs
        if set(message.self_mask_shares) != self.inputs or set(message.mask_key_shares) != dropped:
            raise SecAggError("unmask_shares must reveal a self-mask share for every survivor "
                              "and a mask-key share for every dropped client, nothing else")
        self._revealed[message.client_id] = message

    @property
    def revealed(self) -> int:
        return len(self._revealed)

    def result(self) -> Unmasked:
        """Rebuild the secrets, remove every remaining mask, and return the sum; raises
        :class:`SecAggError` with fewer than ``threshold`` answers or inconsistent shares."""
        threshold = self.params.threshold
        if len(self._revealed) < threshold:
            raise SecAggError(f"{len(self._revealed)} clients revealed shares, fewer than the "
                              f"threshold {threshold}")
        index = _indices(list(self.keys))
        total = self.total.copy()
        for cid in sorted(self.inputs):
            seed = combine_secret({index[r]: m.self_mask_shares[cid]
                                   for r, m in self._revealed.items()}, threshold)
            total -= prg(_hkdf(seed, _label("self-mask", self.round)), self.length)
        for gone in sorted(self.sharers - self.inputs):
            secret = combine_secret({index[r]: m.mask_key_shares[gone]
                                     for r, m in self._revealed.items()}, threshold)
            key = X25519PrivateKey.from_private_bytes(secret)
            if _public(key) != self.keys[gone][1]:
                raise SecAggError(f"the shares of {gone}'s mask key do not rebuild it")
            for cid in sorted(self.inputs):
                pair = _agree(key, self.keys[cid][1], _label("mask", self.round))
                total -= _pair_mask(pair, cid, gone, self.length)
        weight = int(total[-1])
        if weight < len(self.inputs):
            raise SecAggError(f"the unmasked weights add up to {weight}, fewer than the "
                              f"{len(self.inputs)} inputs: a client sent a malformed vector")
        return Unmasked(dequantize(total[:-1], self.params.scale_bits), weight)
