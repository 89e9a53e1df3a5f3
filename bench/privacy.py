"""Privacy benchmark: what secure aggregation and differential privacy add to a round.

Usage::

    python bench/privacy.py --clients 4,10,50 --out bench/results/privacy

In one process, without a model: one round of ``n`` clients whose updates have the shapes of
LP-FL's LoRA adapters on SmolLM2-135M (r = 8 on ``q_proj`` and ``v_proj`` of 30 layers:
460,800 parameters), each a small random change of the global state. For each ``n`` it measures

- **bytes per client**: every message a client sends and receives in the round, serialized as on
  the wire (lpfl header + payload; websocket framing not included), plain fp32 FedAvg against
  secure aggregation (:mod:`lpfl.secagg`: the task, keys, sealed shares, masked input,
  unmasking);
- **client compute**: encoding the fp32 update, against building, masking and unmasking the
  secure-aggregation vector (per client, the mean over the round's clients);
- **server compute**: decoding and folding ``n`` updates (FedAvg's running sum), against every
  secure-aggregation step of the server, once with every client through and once with 10 % of
  the clients (at least one) dropping out after sharing keys, whose masks are then rebuilt;
- **differential privacy**: the server's noise for one round, and the accountant's ε after the
  round (:class:`lpfl.privacy.Accountant`, 10 % of 10·n clients sampled).

``results.json`` holds every number and the machine (CPU model, cores, versions); ``report.md``
is made from it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from lpfl import secagg, wire
from lpfl.aggregation import RunningWeightedSum
from lpfl.privacy import Accountant, DpRound, PrivacyRules, gaussian_noise
from lpfl.secagg import MaskedSum, MaskingClient
from lpfl.tensors import decode_tensors, encode_tensors
from lpfl.trainer_api import cpu_features, cpu_model

LAYERS, HIDDEN, KV, RANK = 30, 576, 192, 8
"""SmolLM2-135M's depth and q/v projection widths, and LP-FL's LoRA rank."""
CLIP_RANGE, MAX_WEIGHT = 1.0, 1000
T = TypeVar("T")
READING = (
    "How to read it: the secure-aggregation uplink is the masked vector (4 bytes a parameter, "
    "like fp32; int8 or fp16 update encodings do not apply to it) plus the keys, one sealed "
    "share pair per peer and the revealed shares, so its extra bytes grow with the number of "
    "clients. The masked vector is one flat tensor, so it saves the plain update's per-tensor "
    "safetensors header (about 100 bytes for each of the 120 tensors): with few clients the "
    "uplink even shrinks. A client's extra compute is one key agreement and one ChaCha20 mask "
    "stream per peer. The server rebuilds one secret per client (the self-mask seed of each "
    "survivor, the mask key of each dropped client) from threshold-many Shamir shares, in "
    "pycryptodome's pure-Python GF(2^128) arithmetic, whose cost grows with the threshold "
    "squared: with many clients that is most of the server's time; each dropped client adds "
    "one mask stream per survivor. The accountant costs a fraction of a second per round when "
    "clients are sampled (dp-accounting's sampling-without-replacement bound is computed order "
    "by order). Seconds are single runs on a machine shared with other jobs: compare within a "
    "row, not to the last digit.")


def lora_state() -> dict[str, torch.Tensor]:
    """A global state with LP-FL's LoRA shapes on SmolLM2-135M (460,800 parameters)."""
    state = {}
    generator = torch.Generator().manual_seed(0)
    for layer in range(LAYERS):
        for module, out in (("q_proj", HIDDEN), ("v_proj", KV)):
            prefix = f"model.layers.{layer}.self_attn.{module}"
            state[f"{prefix}.lora_A.weight"] = torch.randn(RANK, HIDDEN, generator=generator) / 30
            state[f"{prefix}.lora_B.weight"] = torch.zeros(out, RANK)
    return state


def trained(reference: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {n: t + 1e-3 * torch.randn(t.shape, generator=generator) for n, t in reference.items()}


def timed(work: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    result = work()
    return result, time.perf_counter() - start


def size(message: wire.Message) -> int:
    return len(message.serialize())


def plain_round(reference: dict[str, torch.Tensor], n: int) -> dict[str, float]:
    """Plain fp32 FedAvg: bytes and compute of one round."""
    task = wire.Task(1, "c-0000", encode_tensors(reference), {"lr": 1e-3}, "fp32", 120.0)
    encode_seconds, updates = [], []
    for i in range(n):
        state = trained(reference, i)
        payload, seconds = timed(lambda state=state: encode_tensors(state))  # type: ignore[misc]
        encode_seconds.append(seconds)
        updates.append(wire.Update(1, f"c-{i:04d}", payload, 32, {"train_loss": 0.5}))
    acc = RunningWeightedSum()

    def fold() -> None:
        for update in updates:
            acc.add(decode_tensors(update.tensors), float(update.num_examples))
        acc.result()

    _, server_seconds = timed(fold)
    return {"uplink_bytes": size(updates[0]), "downlink_bytes": size(task),
            "client_seconds": statistics.mean(encode_seconds), "server_seconds": server_seconds}


def masked_round(reference: dict[str, torch.Tensor], n: int,
                 drop: int) -> dict[str, float]:
    """One secure-aggregation round of ``n`` clients, ``drop`` of them leaving after sharing."""
    length = secagg.vector_length(reference)
    params = wire.MaskingParams(PrivacyRules().threshold_for(n),
                                secagg.scale_bits(n, MAX_WEIGHT, CLIP_RANGE), CLIP_RANGE,
                                MAX_WEIGHT)
    ids = [f"c-{i:04d}" for i in range(n)]
    up = dict.fromkeys(ids, 0)
    down = dict.fromkeys(ids, 0)
    client_seconds = dict.fromkeys(ids, 0.0)
    server_seconds = 0.0
    task = wire.Task(1, ids[0], encode_tensors(reference), {"lr": 1e-3}, "fp32", 120.0, params)
    for cid in ids:
        down[cid] += size(task)
    clients: dict[str, MaskingClient] = {}
    server = MaskedSum(1, params, length)
    for i, cid in enumerate(ids):
        state = trained(reference, i)
        clients[cid], seconds = timed(lambda cid=cid, state=state: MaskingClient(  # type: ignore[misc]
            cid, 1, params, reference, state, 32, {"train_loss": 0.5}))
        client_seconds[cid] += seconds
        advert = clients[cid].advertise()
        up[cid] += size(advert)
        server_seconds += timed(lambda advert=advert: server.add_keys(advert))[1]  # type: ignore[misc]

    def exchange(asked: Sequence[wire.Message], leaving: frozenset[str] = frozenset()) -> None:
        nonlocal server_seconds
        for message in asked:
            cid = message.client_id
            down[cid] += size(message)
            if cid in leaving:
                continue
            reply, seconds = timed(lambda m=message: clients[m.client_id].respond(m))  # type: ignore[misc]
            client_seconds[cid] += seconds
            up[cid] += size(reply)
            server_seconds += timed(lambda reply=reply: accept(reply))[1]  # type: ignore[misc]

    def accept(reply: wire.Message) -> None:
        if isinstance(reply, wire.ShareKeys):
            server.add_shares(reply)
        elif isinstance(reply, wire.MaskedInput):
            server.add_input(reply)
        elif isinstance(reply, wire.UnmaskShares):
            server.add_revealed(reply)

    keys, seconds = timed(server.key_messages)
    server_seconds += seconds
    exchange(keys)
    shares, seconds = timed(server.share_messages)
    server_seconds += seconds
    exchange(shares, frozenset(ids[:drop]))
    unmask, seconds = timed(server.unmask_messages)
    server_seconds += seconds
    exchange(unmask)
    result, seconds = timed(server.result)
    server_seconds += seconds
    assert result.total_weight == 32 * (n - drop)
    pieces = secagg.split_secret(bytes(32), params.threshold, n)
    _, combine_seconds = timed(lambda: secagg.combine_secret(
        {i + 1: piece for i, piece in enumerate(pieces)}, params.threshold))
    through = ids[drop:]
    return {"uplink_bytes": statistics.mean(up[c] for c in through),
            "downlink_bytes": statistics.mean(down[c] for c in through),
            "client_seconds": statistics.mean(client_seconds[c] for c in through),
            "server_seconds": server_seconds, "threshold": params.threshold,
            "shamir_combine_seconds": combine_seconds,
            "scale_bits": params.scale_bits, "dropped": drop}


def dp_round(reference: dict[str, torch.Tensor], n: int) -> dict[str, float]:
    """Differential privacy's extra server work in one round: the noise and the accountant."""
    rng = np.random.default_rng()
    values = sum(t.numel() for t in reference.values())
    _, noise_seconds = timed(lambda: gaussian_noise(rng, values, 0.1))
    release = DpRound(1.0, 10 * n, n)
    accountant = Accountant(1e-5)
    epsilon, account_seconds = timed(lambda: accountant.epsilon(release))
    return {"noise_seconds": noise_seconds, "accountant_seconds": account_seconds,
            "epsilon_after_one_round": epsilon, "population": 10 * n, "sampled": n}


def environment() -> dict[str, Any]:
    import cryptography

    return {"cpu": cpu_model(), "cpu_features": cpu_features(), "cpu_count": os.cpu_count() or 0,
            "machine": platform.machine(), "python": platform.python_version(),
            "numpy": np.__version__, "torch": torch.__version__,
            "cryptography": cryptography.__version__, "threads": torch.get_num_threads()}


def measure(counts: Sequence[int],
            reference: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Every measurement for each client count, on ``reference`` (default: LoRA's shapes)."""
    reference = lora_state() if reference is None else reference
    runs = []
    for n in counts:
        print(f"{n} clients ...", file=sys.stderr, flush=True)
        drop = max(1, n // 10)
        runs.append({"clients": n, "plain": plain_round(reference, n),
                     "secure_aggregation": masked_round(reference, n, 0),
                     "secure_aggregation_dropouts": masked_round(reference, n, drop),
                     "differential_privacy": dp_round(reference, n)})
    return {"parameters": sum(t.numel() for t in reference.values()),
            "clip_range": CLIP_RANGE, "max_weight": MAX_WEIGHT,
            "environment": environment(), "runs": runs}


def report(results: dict[str, Any]) -> str:
    env = results["environment"]
    lines = [
        "# Privacy: what secure aggregation and differential privacy add to a round", "",
        f"One round in one process (`bench/privacy.py`), {results['parameters']:,} parameters "
        "(LP-FL's LoRA r = 8 on SmolLM2-135M's q/v projections), fake clients with a small "
        "random change each; secure aggregation with `clip-range` "
        f"{results['clip_range']}, `max-weight` {results['max_weight']} and the default "
        "threshold. Bytes are lpfl messages as serialized (header + payload), without "
        "websocket framing; seconds are wall time on one thread of "
        f"{env['cpu']} ({env['cpu_count']} cores; cryptography {env['cryptography']}, "
        f"numpy {env['numpy']}).", "",
        "| clients | uplink / client, plain | uplink / client, secure agg. | extra | "
        "downlink / client, plain | downlink / client, secure agg. | extra |",
        "|---:|---:|---:|---:|---:|---:|---:|"]
    for run in results["runs"]:
        plain, masked = run["plain"], run["secure_aggregation"]
        lines.append(
            f"| {run['clients']} | {plain['uplink_bytes']:,} | {masked['uplink_bytes']:,.0f} | "
            f"{masked['uplink_bytes'] - plain['uplink_bytes']:+,.0f} | "
            f"{plain['downlink_bytes']:,} | {masked['downlink_bytes']:,.0f} | "
            f"{masked['downlink_bytes'] - plain['downlink_bytes']:+,.0f} |")
    lines += ["", "| clients | client s, plain | client s, secure agg. | server s, plain | "
              "server s, secure agg. | server s, 10 % dropped | threshold | one Shamir "
              "rebuild, s | scale bits |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for run in results["runs"]:
        plain, masked = run["plain"], run["secure_aggregation"]
        dropped = run["secure_aggregation_dropouts"]
        lines.append(
            f"| {run['clients']} | {plain['client_seconds']:.3f} | "
            f"{masked['client_seconds']:.3f} | {plain['server_seconds']:.3f} | "
            f"{masked['server_seconds']:.3f} | {dropped['server_seconds']:.3f} "
            f"({dropped['dropped']} dropped) | {masked['threshold']} | "
            f"{masked['shamir_combine_seconds']:.3f} | {masked['scale_bits']} |")
    lines += ["", "Differential privacy adds, per round on the server: the noise for every "
              "parameter, and the accountant's ε (z = 1, δ = 1e-5, sampling n of 10·n clients).",
              "", "| clients | noise s | accountant s | ε after one round |",
              "|---:|---:|---:|---:|"]
    for run in results["runs"]:
        dp = run["differential_privacy"]
        lines.append(f"| {run['clients']} | {dp['noise_seconds']:.4f} | "
                     f"{dp['accountant_seconds']:.3f} | {dp['epsilon_after_one_round']:.3g} |")
    lines += ["", READING, ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--clients", default="4,10,50",
                        help="comma-separated client counts (default 4,10,50)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/privacy"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = measure([int(n) for n in args.clients.split(",")])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "report.md").write_text(report(results))
    print(f"wrote {args.out / 'results.json'} and {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
