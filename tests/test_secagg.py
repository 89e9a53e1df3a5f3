"""Secure aggregation: the ring, the masking, dropouts, and what the server keeps, through the
round machine event by event (no sockets) and through a whole in-process federation."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pytest
import torch

from lpfl import protocol as p
from lpfl import secagg, wire
from lpfl.errors import ConfigError
from lpfl.privacy import PrivacyRules
from lpfl.records import ClientStatus
from lpfl.rounds import drive
from lpfl.strategy import Aggregation, FedAvg
from lpfl.tensors import encode_tensors
from tests import fake_federation as ff

CAPS = {"backend": "fake", "cpu_arch": "x86_64", "memory_bytes": 1, "runtime": {}}
GLOBAL = {"a": torch.zeros(2, 3), "b": torch.full((4,), 0.5)}
MASKED = PrivacyRules(secure_aggregation=True, clip_range=2.0, max_weight=100)
RULES = p.RoundRules(clip=p.ClipMode.OFF, min_updates=2, privacy=MASKED)


def settings_for(round_number: int) -> dict[str, Any]:
    return {"round": round_number}


def trained(seed: int) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    return {name: t + torch.tensor(rng.uniform(-1.5, 1.5, t.shape), dtype=torch.float32)
            for name, t in GLOBAL.items()}


def examples(cid: str) -> int:
    return 7 + 3 * int(cid[1:])


def machine(per_round: int, rounds: int = 1, rules: p.RoundRules = RULES) -> p.RoundMachine:
    m = p.RoundMachine(FedAvg(per_round, seed=0, round_settings=settings_for), GLOBAL, rules,
                       rounds)
    for i in range(per_round):
        m.handle(p.ClientJoined(f"c{i}", CAPS))
    return m


def sends(actions: list[p.Action]) -> dict[str, wire.Message]:
    return {a.client_id: a.message for a in actions if isinstance(a, p.Send)}


def phase(m: p.RoundMachine) -> p.Phase:
    """The machine's phase, read through a call so the type checker does not pin it."""
    return m.phase


def of(actions: list[p.Action], kind: type) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


class Round:
    """Clients of one masked round driven by hand, so a test can stop any of them at any step."""

    def __init__(self, m: p.RoundMachine, actions: list[p.Action]) -> None:
        self.m = m
        self.tasks = {cid: msg for cid, msg in sends(actions).items()
                      if isinstance(msg, wire.Task)}
        self.clients: dict[str, secagg.MaskingClient] = {}
        self.inputs: dict[str, np.ndarray] = {}
        self.states: dict[str, dict[str, torch.Tensor]] = {}
        self.out: list[p.Action] = []

    def train(self, skip: frozenset[str] = frozenset()) -> None:
        for cid, task in sorted(self.tasks.items()):
            if cid in skip:
                continue
            assert task.secure_aggregation is not None
            state = trained(int(cid[1:]))
            self.states[cid] = state
            client = secagg.MaskingClient(cid, task.round, task.secure_aggregation, GLOBAL, state,
                                          examples(cid), {"train_loss": 1.0})
            self.clients[cid] = client
            self.inputs[cid] = secagg.client_input(task.secure_aggregation, GLOBAL, state,
                                                   examples(cid))
            self.out = self.m.handle(p.SecAggReceived(client.advertise()))

    def step(self, skip: frozenset[str] = frozenset(), leave: bool = True) -> None:
        """Every client the last actions asked something answers, except ``skip`` (who leave,
        or stay silent without ``leave``)."""
        asked = {cid: msg for cid, msg in sends(self.out).items()
                 if isinstance(msg, wire.PublicKeys | wire.ShareKeys | wire.Unmask)}
        assert asked, self.out
        out: list[p.Action] = []
        for cid, message in sorted(asked.items()):
            if cid in skip:
                if leave:
                    out += self.m.handle(p.ClientLeft(cid))
                continue
            reply = wire.parse(self.clients[cid].respond(message).serialize())
            out += self.m.handle(p.SecAggReceived(reply))
        self.out = out

    def expected_ring_sum(self, cids: set[str]) -> np.ndarray:
        total = np.zeros_like(next(iter(self.inputs.values())))
        for cid in cids:
            total += self.inputs[cid]
        return total


def start(per_round: int, rules: p.RoundRules = RULES) -> Round:
    m = p.RoundMachine(FedAvg(per_round, seed=0, round_settings=settings_for), GLOBAL, rules, 1)
    actions: list[p.Action] = []
    for i in range(per_round):
        actions += m.handle(p.ClientJoined(f"c{i}", CAPS))
    return Round(m, actions)


def test_quantization_round_trips_within_half_a_step_and_never_wraps() -> None:
    bits = secagg.scale_bits(50, 1000, 1.0)
    assert 50 * 1000 * 1.0 * 2**bits < 2**31 <= 50 * 1000 * 1.0 * 2 ** (bits + 1)
    values = np.array([-1000.0, -0.3, 0.0, 1e-7, 0.3, 1000.0])
    back = secagg.dequantize(secagg.quantize(values, bits), bits)
    assert np.all(np.abs(back - values) <= 2.0 ** -(bits + 1))
    # 50 clients at the extreme still sum without wrapping.
    ring = sum((secagg.quantize(np.array([-1000.0, 1000.0]), bits) for _ in range(50)),
               np.zeros(2, dtype=np.uint32))
    assert np.allclose(secagg.dequantize(ring, bits), [-50_000, 50_000], atol=50 * 2.0**-bits)
    with pytest.raises(ValueError, match="do not fit"):
        secagg.scale_bits(200, 2**20, 100.0)


def test_a_secret_survives_shamir_with_exactly_the_threshold_of_shares() -> None:
    secret = bytes(range(32))
    shares = secagg.split_secret(secret, 3, 5)
    assert secagg.combine_secret({i + 1: s for i, s in enumerate(shares) if i in (0, 2, 4)},
                                 3) == secret
    assert secagg.combine_secret({4: shares[3], 2: shares[1], 1: shares[0], 5: shares[4]},
                                 3) == secret
    with pytest.raises(secagg.SecAggError, match="2 shares cannot"):
        secagg.combine_secret({1: shares[0], 2: shares[1]}, 3)


def test_the_masked_sum_is_the_plain_sum_exactly_and_the_average_matches_numpy() -> None:
    r = start(4)
    r.train()
    assert {type(m) for m in sends(r.out).values()} == {wire.PublicKeys}
    assert phase(r.m) is p.Phase.SHARING
    r.step()
    assert phase(r.m) is p.Phase.MASKING
    r.step()
    assert phase(r.m) is p.Phase.UNMASKING
    current = r.m._current
    assert current is not None and current.masked is not None
    masked_total = current.masked.total.copy()
    plain_total = r.expected_ring_sum(set(r.inputs))
    assert not np.array_equal(masked_total, plain_total)  # still masked
    r.step()
    (closed,) = of(r.out, p.RoundClosed)
    # The unmasked integers are the plain ring sum, exactly.
    params = r.tasks["c0"].secure_aggregation
    assert params is not None
    weights = [min(examples(c), params.max_weight) for c in sorted(r.inputs)]
    names = sorted(GLOBAL)
    deltas = [secagg.flatten(r.states[c], names) - secagg.flatten(GLOBAL, names)
              for c in sorted(r.inputs)]
    expected = np.average(deltas, axis=0, weights=weights) + secagg.flatten(GLOBAL, names)
    got = secagg.flatten(closed.global_state, names)
    step = 2.0 ** -params.scale_bits
    # Each weighted value is off by at most half a step; the mean by at most that over Σw.
    assert np.abs(got - expected).max() <= len(weights) * step / 2 / sum(weights) + 1e-6
    assert np.abs(got - expected).max() > 0  # the ring quantized something
    assert {o.status for o in closed.outcomes.values()} == {ClientStatus.UPDATED}
    assert all(o.masked and o.num_examples == 0 for o in closed.outcomes.values())
    assert closed.train_metrics == {"train_loss": 1.0}


def test_the_unmasked_integers_equal_the_sum_of_the_clients_ring_vectors() -> None:
    params = wire.MaskingParams(3, secagg.scale_bits(5, 100, 2.0), 2.0, 100)
    length = secagg.vector_length(GLOBAL)
    clients, inputs = {}, {}
    for i in range(5):
        cid = f"c{i}"
        clients[cid] = secagg.MaskingClient(cid, 1, params, GLOBAL, trained(i), examples(cid), {})
        inputs[cid] = secagg.client_input(params, GLOBAL, trained(i), examples(cid))
    server = secagg.MaskedSum(1, params, length)
    for client in clients.values():
        server.add_keys(client.advertise())
    for keys in server.key_messages():
        server.add_shares(clients[keys.client_id].respond(keys))  # type: ignore[arg-type]
    for shares in server.share_messages():
        server.add_input(clients[shares.client_id].respond(shares))  # type: ignore[arg-type]
    for unmask in server.unmask_messages():
        server.add_revealed(clients[unmask.client_id].respond(unmask))  # type: ignore[arg-type]
    total = np.zeros(length, dtype=np.uint32)
    for vector in inputs.values():
        total += vector
    result = server.result()
    assert np.array_equal(secagg.quantize(result.weighted_sum, params.scale_bits), total[:-1])
    assert result.total_weight == int(total[-1]) == sum(examples(c) for c in clients)


@pytest.mark.parametrize(("before", "after"), [(set(), {"c0", "c3"}), ({"c4"}, {"c1"})],
                         ids=["two-after-masking", "one-before-one-after"])
def test_dropouts_up_to_the_threshold_still_give_the_right_sum(before: set[str],
                                                              after: set[str]) -> None:
    r = start(5)  # threshold floor(0.5 * 5) + 1 = 3
    assert r.tasks["c0"].secure_aggregation is not None
    assert r.tasks["c0"].secure_aggregation.threshold == 3
    r.train()
    r.step()  # shares
    r.step(skip=frozenset(before))  # masked inputs: `before` leave without sending theirs
    r.step(skip=frozenset(after))  # unmasking: `after` leave with their inputs in the sum
    (closed,) = of(r.out, p.RoundClosed)
    survivors = set(r.inputs) - before
    names = sorted(GLOBAL)
    params = r.tasks["c0"].secure_aggregation
    weights = [examples(c) for c in sorted(survivors)]
    deltas = [secagg.flatten(r.states[c], names) - secagg.flatten(GLOBAL, names)
              for c in sorted(survivors)]
    expected = np.average(deltas, axis=0, weights=weights) + secagg.flatten(GLOBAL, names)
    step = 2.0 ** -params.scale_bits
    assert np.abs(secagg.flatten(closed.global_state, names) - expected).max() <= \
        len(weights) * step / 2 / sum(weights) + 1e-6
    assert {c for c, o in closed.outcomes.items() if o.status is ClientStatus.UPDATED} == \
        survivors
    for cid in before:
        assert closed.outcomes[cid].status is ClientStatus.DROPPED


def test_dropouts_beyond_the_threshold_fail_the_round_cleanly_then_abort() -> None:
    rules = dataclasses.replace(RULES, max_attempts=2)
    r = start(5, rules)
    r.train()
    r.step()
    r.step()
    r.step(skip=frozenset({"c0", "c1", "c2"}))  # 2 of 5 reveal shares: fewer than 3
    (failed,) = of(r.out, p.RoundFailed)
    assert "could not be unmasked" in failed.reason and "fewer than the threshold 3" in \
        failed.reason
    assert not of(r.out, p.RoundClosed)
    assert phase(r.m) is p.Phase.WAITING  # for enough clients to retry
    rejoined: list[p.Action] = []
    for cid in ("c0", "c1", "c2"):
        rejoined += r.m.handle(p.ClientJoined(cid, CAPS))
    retry = Round(r.m, rejoined)
    assert set(retry.tasks) == {f"c{i}" for i in range(5)}
    assert of(rejoined, p.StartTimer) == [p.StartTimer(1, 2, RULES.deadline_s)]
    retry.train(skip=frozenset({"c0", "c1", "c2"}))
    for cid in ("c0", "c1", "c2"):
        retry.out = r.m.handle(p.ClientLeft(cid))
    aborted = retry.out
    assert isinstance(aborted[-1], p.RunAborted)
    assert "2 clients advertised keys, fewer than the 3 needed" in aborted[-1].reason
    assert torch.equal(r.m.global_state["b"], GLOBAL["b"])


def test_a_step_that_misses_its_deadline_fails_with_too_few_clients() -> None:
    r = start(3)
    r.train()
    r.step(skip=frozenset({"c1", "c2"}), leave=False)  # only c0 shares keys
    timer = of(r.out, p.StartTimer)
    assert not timer  # the sharing step waits for the others
    assert r.m.handle(p.DeadlinePassed(1, 1, 0)) == []  # the training timer is stale now
    failed = r.m.handle(p.DeadlinePassed(1, 1, 1))
    (round_failed,) = of(failed, p.RoundFailed)
    assert "1 clients shared keys, fewer than the 2 needed" in round_failed.reason
    assert {round_failed.outcomes[c].status for c in ("c1", "c2")} == {ClientStatus.TIMED_OUT}


def _arrays(root: object) -> Iterator[np.ndarray]:
    """Every array, tensor and byte string reachable from ``root`` (as numpy arrays)."""
    seen: set[int] = set()
    todo = [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or obj is None or isinstance(obj, str | int | float | bool | type):
            continue
        seen.add(id(obj))
        if isinstance(obj, np.ndarray):
            yield obj
        elif isinstance(obj, torch.Tensor):
            yield obj.detach().numpy()
        elif isinstance(obj, bytes | bytearray):
            yield np.frombuffer(bytes(obj), dtype=np.uint8)
        elif isinstance(obj, Mapping):
            todo += list(obj.keys()) + list(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset):
            todo += list(obj)
        elif hasattr(obj, "__dict__"):
            todo += list(vars(obj).values())
        elif hasattr(obj, "__slots__"):
            todo += [getattr(obj, s) for s in obj.__slots__ if hasattr(obj, s)]


def _holds(root: object, secret: np.ndarray) -> bool:
    raw = np.ascontiguousarray(secret).tobytes()
    for array in _arrays(root):
        data = np.ascontiguousarray(array).tobytes()
        if data == raw or (len(raw) >= 16 and raw in data):
            return True
    return False


def test_the_server_never_holds_an_individual_unmasked_update() -> None:
    r = start(4)
    names = sorted(GLOBAL)

    def secrets() -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for cid, vector in r.inputs.items():
            encoded = np.frombuffer(secagg.encode_vector(vector), dtype=np.uint8)
            state = r.states[cid]
            out += [vector, vector[:-1], encoded, secagg.flatten(state, names).astype(np.float32),
                    state["a"].numpy(), state["b"].numpy()]
        return out

    def check() -> None:
        for secret in secrets():
            assert not _holds(r.m, secret)
            assert not _holds(r.out, secret)  # nor anything it asks the adapter to send

    # The test's own probe works: it finds a client's input where it is.
    r.train()
    assert _holds(r.clients["c0"], r.inputs["c0"])
    check()
    r.step()
    check()
    r.step()
    check()
    r.step()
    (closed,) = of(r.out, p.RoundClosed)
    check()
    assert closed.global_state  # the sum, unmasked and averaged, is all it learned


def test_the_wrong_message_for_the_step_ends_the_clients_turn() -> None:
    r = start(3)
    plain = wire.Update(1, "c0", encode_tensors(GLOBAL), 5)
    out = r.m.handle(p.UpdateReceived(plain))
    error = sends(out)["c0"]
    assert isinstance(error, wire.Error) and error.code == wire.E_UNEXPECTED
    assert "expects advertise_keys" in error.reason
    assert r.m.screen_update("c1", 1, wire.MASKED_INPUT) is not None
    r.train(skip=frozenset({"c0"}))
    r.step()
    r.step()
    r.step()
    (closed,) = of(r.out, p.RoundClosed)
    assert closed.outcomes["c0"].status is ClientStatus.REJECTED


def test_shares_that_do_not_reach_every_peer_are_refused() -> None:
    r = start(3)
    r.train()
    public = sends(r.out)["c0"]
    reply = r.clients["c0"].respond(public)
    assert isinstance(reply, wire.ShareKeys)
    partial = wire.ShareKeys(1, "c0", dict(list(reply.shares.items())[:1]))
    out = r.m.handle(p.SecAggReceived(partial))
    error = sends(out)["c0"]
    assert isinstance(error, wire.Error) and error.code == wire.E_INVALID_UPDATE
    assert "missing" in error.reason


def test_a_client_refuses_an_unmask_that_would_expose_it() -> None:
    r = start(3)
    r.train()
    r.step()
    r.step()
    unmask = sends(r.out)["c0"]
    assert isinstance(unmask, wire.Unmask)
    client = r.clients["c0"]
    # The server claims a survivor dropped (to get its mask key while holding its input).
    with pytest.raises(secagg.SecAggError, match="exactly the clients"):
        client.respond(wire.Unmask(1, "c0", ("c0", "c1"), ()))
    with pytest.raises(secagg.SecAggError, match="fewer than the threshold"):
        client.respond(wire.Unmask(1, "c0", ("c0",), ("c1", "c2")))
    client.respond(unmask)
    with pytest.raises(secagg.SecAggError, match="a second time"):
        client.respond(unmask)


def test_a_tampered_share_does_not_open() -> None:
    r = start(3)
    r.train()
    r.step()
    forwarded = sends(r.out)["c0"]
    assert isinstance(forwarded, wire.ShareKeys)
    peer, sealed = next(iter(forwarded.shares.items()))
    bad = wire.ShareKeys(1, "c0", {**forwarded.shares,
                                   peer: sealed[:-1] + bytes([sealed[-1] ^ 1])})
    with pytest.raises(secagg.SecAggError, match="does not open"):
        r.clients["c0"].respond(bad)


@pytest.mark.parametrize(("rules", "message"), [
    ({"aggregation": Aggregation.MEDIAN}, "cannot run with secure aggregation"),
    ({"clip": p.ClipMode.ADAPTIVE}, "needs each update's norm"),
    ({"min_updates": 1}, "needs min-updates >= 2"),
])
def test_combinations_secure_aggregation_cannot_run_are_refused(rules: dict[str, Any],
                                                                message: str) -> None:
    base: dict[str, Any] = {"clip": p.ClipMode.OFF, "min_updates": 2, "privacy": MASKED}
    with pytest.raises(ConfigError, match=message):
        p.RoundRules(**(base | rules))


def test_too_many_clients_or_too_coarse_a_ring_are_refused() -> None:
    with pytest.raises(ConfigError, match="at most 200"):
        machine(201)
    coarse = dataclasses.replace(RULES, privacy=dataclasses.replace(
        MASKED, clip_range=1e6, max_weight=2**20))
    with pytest.raises(ConfigError, match="do not fit a 32-bit ring"):
        machine(3, rules=coarse)


@pytest.mark.parametrize("body", [
    {"cipher_key": "not base64!", "mask_key": "AAAA"},
    {"cipher_key": "AAAA", "mask_key": "AAAA"},
])
def test_malformed_secure_aggregation_messages_are_bad_messages(body: dict[str, str]) -> None:
    header = ('{"body":' + str(body).replace("'", '"') + ',"client_id":"c0","payload_bytes":0,'
              '"round":1,"schema_version":1,"type":"advertise_keys"}').encode()
    with pytest.raises(wire.WireError) as info:
        wire.parse(len(header).to_bytes(4, "big") + header)
    assert info.value.code == wire.E_BAD_MESSAGE


def test_a_masked_input_of_the_wrong_size_is_refused() -> None:
    params = wire.MaskingParams(2, 10, 1.0, 10)
    server = secagg.MaskedSum(1, params, 5)
    with pytest.raises(secagg.SecAggError, match="one uint32 tensor"):
        server.add_input(wire.MaskedInput(1, "c0", secagg.encode_vector(np.zeros(4, np.uint32))))
    with pytest.raises(secagg.SecAggError, match="not a safetensors"):
        server.add_input(wire.MaskedInput(1, "c0", b"garbage"))


IDS = [f"c-{i}" for i in range(1, 6)]
FEDERATION: dict[str, Any] = {"clip": p.ClipMode.ABSOLUTE, "clip_norm": 50.0, "min_updates": 2}


def test_a_federation_with_secure_aggregation_ends_where_plain_fedavg_does() -> None:
    privacy = PrivacyRules(secure_aggregation=True, clip_range=4.0, max_weight=100)
    seen: list[Any] = []
    trainers = {cid: ff.FakeTrainer(cid) for cid in IDS}
    masked = drive(ff.strategy(4), ff.initial_state(), p.RoundRules(**FEDERATION,
                                                                    privacy=privacy),
                   3, trainers, ff.evaluate, seen.append)
    plain = ff.reference_state(IDS, rounds=3, clients_per_round=4, **FEDERATION)
    # Per round, the mean is off by at most half a step per client over the total weight; the
    # error carries into later rounds through the clients' targets, by at most a factor lr.
    bits = secagg.scale_bits(4, 100, 4.0)
    for name, tensor in plain.items():
        assert torch.allclose(masked[name], tensor, atol=3 * 2.0 ** -bits, rtol=0)
    assert [r.committed.round for r in seen] == [1, 2, 3]
    for driven in seen:
        updated = [o for o in driven.committed.outcomes.values()
                   if o.status is ClientStatus.UPDATED]
        assert len(updated) == 4 and all(o.masked for o in updated)
        # The masked vector: one uint32 a parameter, plus the weight.
        size = len(secagg.encode_vector(np.zeros(secagg.vector_length(ff.initial_state()),
                                                 dtype=np.uint32)))
        assert {t.payload_uplink_bytes for t in driven.traffic.values()} == {size}


def test_secure_aggregation_refuses_a_fleet_that_hands_over_plain_updates() -> None:
    class Remote:
        def members(self) -> Mapping[str, Mapping[str, Any]]:
            return {"c-1": CAPS, "c-2": CAPS}

        def train(self, round_number: int, tasks: Mapping[str, Mapping[str, Any]],
                  state: Mapping[str, torch.Tensor]) -> Iterator[tuple[str, Any]]:
            raise AssertionError("never reached")

    rules = p.RoundRules(**FEDERATION, privacy=PrivacyRules(secure_aggregation=True))
    with pytest.raises(ConfigError, match="needs the clients to mask their own updates"):
        drive(ff.strategy(2), ff.initial_state(), rules, 1, Remote(), ff.evaluate)
