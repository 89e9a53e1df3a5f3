"""``lpfl field``: one federated run per link profile and method, each client a real process in
its own network namespace behind a shaped veth link and a delay proxy.

Layout of one run (``OUT/<profile>/<method>/``): the server (``lpfl server``) listens on
127.0.0.1 in the root namespace; client ``i`` runs ``lpfl client`` in namespace ``<prefix>-c<i>``
and connects to a :class:`~lpfl.harness.field.delay_proxy.DelayProxy` on its veth's root end,
which forwards to the server with half the profile's RTT each way. ``tc tbf`` shapes the veth
(uplink on the client end, downlink on the root end) and is verified before the runs of a
profile. The server writes ``results.json`` as in ``lpfl launch``; this module adds
``field.json``: per round and client the wire bytes, upload/download seconds (timed by the
proxy), compute seconds, waiting time and the round's wall time and accuracy.

FP-FL moves the whole model every round, which on a slow link takes hours. ``time_budget_s``
bounds each FP-FL run: it runs as many rounds as the estimated round time fits (none when even
one does not), and the remaining rounds are extrapolated from the measured ones (or from the
link rate) and marked ``"extrapolated": true``; their accuracy is never invented.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from lpfl.config import RunConfig, parse_override, read_toml
from lpfl.errors import LpflError
from lpfl.fleet import Fleet
from lpfl.harness.field.calibrate import cpu_quota, measure_host
from lpfl.harness.field.cpu_quota import ClientGroups, Limits, detect, missing_cgroups
from lpfl.harness.field.delay_proxy import Chunk, ProxyGroup
from lpfl.harness.field.netns import Namespaces, NotPermitted, missing_privileges
from lpfl.harness.field.overselection import LateUpload, late_uploads
from lpfl.harness.field.shaping import shape, verify
from lpfl.harness.field.target import Target
from lpfl.harness.launch import (
    free_port,
    prepare_run_dir,
    read_rounds,
    stop_processes,
    wait_for_port,
    watch_rounds,
)
from lpfl.harness.run_report import full_model_payload
from lpfl.methods import Trains, lookup
from lpfl.profiles.devices import load_device_profile
from lpfl.profiles.links import LinkProfile, load_profiles
from lpfl.records import ClientEmulation, ClientStatus, RoundRecord
from lpfl.transport import EvaluationMode, ServerSettings, load_server_config

log = logging.getLogger(__name__)

EXTRAPOLATED = "extrapolated"
"""The status of the one client row of an extrapolated round (a mean, not a client)."""


@dataclass(frozen=True)
class FieldPlan:
    """Everything ``lpfl field`` was asked to do: one run per link profile in ``profiles`` with
    ``clients`` clients each, or with a ``fleet``, one run of the fleet's clients, each on its
    own link and device. A fleet's server evaluates in the background (off the rounds'
    critical path) unless the run file or ``overrides`` set ``server.evaluation``, or the
    accuracy guard (``server.round.max-accuracy-drop``) needs it inline."""

    config: Path
    links: Path
    profiles: Sequence[str]
    clients: int
    rounds: int
    methods: Sequence[str]
    out: Path
    time_budget_s: float = math.inf
    run_timeout_s: float = 6 * 3600.0
    verify_seconds: float = 2.0
    target: Target | None = None
    fleet: Fleet | None = None
    overrides: Sequence[str] = ()
    """``--set SECTION.KEY=VALUE`` overrides of the run file, for the server and the clients."""


@dataclass(frozen=True)
class Scenario:
    """The clients of one series of runs: client ``i`` gets ``links[i]`` and, in a fleet,
    ``emulations[i]`` (its device and CPU quota). ``name`` names the output folder."""

    name: str
    links: Sequence[LinkProfile]
    emulations: Sequence[ClientEmulation] = ()
    calibration: Mapping[str, Any] | None = None

    @property
    def clients(self) -> int:
        return len(self.links)

    def profile_document(self) -> dict[str, Any]:
        """What ``field.json`` says of the link: the profile, or for a fleet its slowest link
        (by uplink) under the fleet's name, which the report's rate columns use."""
        slowest = min(self.links, key=lambda p: p.uplink_mbit)
        if len({p.name for p in self.links}) == 1:
            return asdict(slowest)
        return asdict(slowest) | {"name": self.name, "source": f"the slowest link of fleet "
                                  f"{self.name} ({slowest.name}); each client's is in clients"}


@dataclass(frozen=True)
class RoundBudget:
    """How many rounds of a method to measure, and why."""

    measured: int
    requested: int
    estimated_round_s: float
    note: str


def estimate_round_seconds(method: str, profile: LinkProfile, config: RunConfig,
                           settings: ServerSettings, compute_s: float) -> float:
    """Physical-limit estimate of one round: global state down, update up, plus compute."""
    if lookup(method).trains is not Trains.FULL:
        return compute_s + 2 * profile.rtt_ms / 1000
    down = full_model_payload(config, settings.round.task_encoding)
    up = full_model_payload(config, settings.round.update_encoding)
    return (profile.seconds_for(down, "down") + profile.seconds_for(up, "up") + compute_s
            + 2 * profile.rtt_ms / 1000)


def round_budget(method: str, rounds: int, estimate_s: float, budget_s: float) -> RoundBudget:
    """All ``rounds`` when they fit ``budget_s`` (or the method is not FP-FL), else fewer."""
    if lookup(method).trains is not Trains.FULL or estimate_s * rounds <= budget_s:
        return RoundBudget(rounds, rounds, estimate_s, "all rounds measured")
    fits = int(budget_s // estimate_s)
    note = (f"time budget {budget_s:.0f} s fits {fits} of {rounds} rounds at an estimated "
            f"{estimate_s:.0f} s each; the other rounds are extrapolated")
    return RoundBudget(min(fits, rounds), rounds, estimate_s, note)


def transfer_span(chunks: Sequence[Chunk], window: tuple[int, int],
                  payload: int) -> Chunk | None:
    """When the proxy saw a payload's bytes move, within one round's part of a stream: the
    first chunk's start and the last one's end, with ``payload`` bytes.

    ``window`` is the round's byte range of the stream (the server's per-round wire counts,
    summed), so a round's bytes are found by offset, not guessed from pauses. Inside it, the
    payload is the shortest run of consecutive chunks that holds ``payload`` bytes: the small
    messages before and after it (a handshake, the update's ack, a ping) are apart from it in
    time and only lengthen a run. None when the window holds fewer bytes than the payload.
    """
    lo, hi = window
    picked: list[tuple[Chunk, int]] = []  # chunks in the window, with their bytes inside it
    offset = 0
    for chunk in chunks:
        first, offset = offset, offset + chunk.nbytes
        if offset > lo and first < hi:
            picked.append((chunk, min(offset, hi) - max(first, lo)))
    if payload <= 0 or sum(n for _, n in picked) < payload:
        return None
    best: Chunk | None = None
    held, j = 0, 0
    for i, (chunk, _) in enumerate(picked):  # two pointers: for each start, the shortest end
        while j < len(picked) and held < payload:
            held += picked[j][1]
            j += 1
        if held < payload:
            break
        end = picked[j - 1][0].end
        if best is None or end - chunk.start < best.end - best.start:
            best = Chunk(chunk.start, end, payload)
        held -= picked[i][1]
    return best


def transfer_seconds(chunks: Sequence[Chunk], window: tuple[int, int],
                     payload: int) -> float | None:
    """Seconds of :func:`transfer_span` (None when there is none)."""
    span = transfer_span(chunks, window, payload)
    return None if span is None else span.end - span.start


def field_rows(rounds: Sequence[dict[str, Any]],
               chunks_by_client: dict[str, dict[str, list[Chunk]]],
               delays: Mapping[str, float], inline_evaluation: bool = True
               ) -> list[dict[str, Any]]:
    """Per round: wall time, accuracy, bytes; per client: the seconds of each phase, its status,
    and in a fleet run the device, link and CPU quota it ran with (``emulation``).

    Upload and download seconds are :func:`transfer_seconds` of the payload plus the client's
    one-way delay (``delays``; first byte sent to last byte delivered); waiting is what is left
    of the round's wall time after download, compute, upload and, when the server evaluated
    inline (``inline_evaluation``), its evaluation (``eval_seconds``). A round's
    ``training_seconds`` is its wall time without an inline evaluation (a background one was
    never part of it). Rounds with ``late`` clients (over-selection) carry what
    :mod:`~lpfl.harness.field.overselection` found of their refused uploads.
    """
    streamed: dict[tuple[str, str], int] = {}  # bytes of each client's stream before a round
    downloads: dict[str, dict[int, Chunk]] = {}  # each client's task downloads, by round
    rows = []
    for record in rounds:
        evaluation = float(record.get("eval_seconds", 0.0))
        training = record["seconds"] - (evaluation if inline_evaluation else 0.0)
        clients = []
        for c in record["clients"]:
            cid = c["client_id"]
            delay = delays[cid]
            spans = {}
            for direction in ("up", "down"):
                wire = c[f"wire_{direction}link_bytes"]
                lo = streamed.get((cid, direction), 0)
                streamed[(cid, direction)] = lo + wire
                spans[direction] = transfer_span(chunks_by_client.get(cid, {}).get(direction, []),
                                                 (lo, lo + wire),
                                                 c[f"payload_{direction}link_bytes"])
            if spans["down"] is not None:
                downloads.setdefault(cid, {})[record["round"]] = spans["down"]
            upload, download = (0.0 if span is None else span.end - span.start + delay
                                for span in (spans["up"], spans["down"]))
            m = c.get("metrics", {})
            compute = float(m.get("compute_seconds", 0.0))
            clients.append({
                "client_id": cid, "status": c["status"],
                "wire_uplink_bytes": c["wire_uplink_bytes"],
                "wire_downlink_bytes": c["wire_downlink_bytes"],
                "payload_uplink_bytes": c["payload_uplink_bytes"],
                "payload_downlink_bytes": c["payload_downlink_bytes"],
                "upload_seconds": upload, "download_seconds": download,
                "soft_label_seconds": float(m.get("soft_label_seconds", 0.0)),
                "train_seconds": float(m.get("train_seconds", 0.0)),
                "compute_seconds": compute, "eval_seconds": evaluation,
                "wait_seconds": max(training - upload - download - compute, 0.0),
                "upload_timed": spans["up"] is not None,
                "download_timed": spans["down"] is not None}
                | ({"emulation": c["emulation"]} if "emulation" in c else {}))
        rows.append({"round": record["round"], "seconds": record["seconds"],
                     "eval_seconds": evaluation, "training_seconds": training,
                     "accuracy": record["eval_metrics"].get("accuracy"),
                     "wire_uplink_bytes": record["wire_uplink_bytes"],
                     "wire_downlink_bytes": record["wire_downlink_bytes"],
                     "payload_uplink_bytes": record["payload_uplink_bytes"],
                     "payload_downlink_bytes": record["payload_downlink_bytes"],
                     "extrapolated": False, "clients": clients})
    _add_late_uploads(rows, chunks_by_client, downloads, delays)
    return rows


def _add_late_uploads(rows: list[dict[str, Any]],
                      chunks_by_client: Mapping[str, Mapping[str, list[Chunk]]],
                      downloads: Mapping[str, Mapping[int, Chunk]],
                      delays: Mapping[str, float]) -> None:
    """Give every ``late`` client row its refused upload (``wasted_uplink_bytes``,
    ``needed_seconds``; None where it never came) and every row with late clients their
    count, the bytes wasted, and the ``time_saved_seconds`` by not waiting for the slowest
    (None while an upload is missing)."""
    accepted = [c["payload_uplink_bytes"] for r in rows for c in r["clients"]
                if ClientStatus(c["status"]).accepted and c["payload_uplink_bytes"] > 0]
    late: dict[tuple[str, int], LateUpload] = {}
    for cid in {c["client_id"] for r in rows for c in r["clients"]}:
        statuses = [(r["round"], ClientStatus(c["status"])) for r in rows for c in r["clients"]
                    if c["client_id"] == cid]
        if accepted and any(status is ClientStatus.LATE for _, status in statuses):
            found = late_uploads(statuses, chunks_by_client.get(cid, {}).get("up", []),
                                 downloads.get(cid, {}), min(accepted), delays[cid])
            late |= {(cid, r): upload for r, upload in found.items()}
    for row in rows:
        uploads = []
        for c in row["clients"]:
            if c["status"] == ClientStatus.LATE:
                uploads.append(late.get((c["client_id"], row["round"]), LateUpload(None, None)))
                c |= asdict(uploads[-1])
        if not uploads:
            continue
        needed = [u.needed_seconds for u in uploads]
        row["late_clients"] = len(uploads)
        row["wasted_uplink_bytes"] = sum(u.wasted_uplink_bytes or 0 for u in uploads)
        row["time_saved_seconds"] = (None if None in needed else max(
            max(n for n in needed if n is not None) - row["training_seconds"], 0.0))


def extrapolate(rows: list[dict[str, Any]], budget: RoundBudget, profile: LinkProfile,
                config: RunConfig, settings: ServerSettings, clients: int) -> list[dict[str, Any]]:
    """Rows for the rounds the budget left out: the mean of the measured rounds, or without
    any, the physical limit of the full model on the link; accuracy stays unknown (None)."""
    missing = budget.requested - len(rows)
    if missing <= 0:
        return rows
    keys = ("seconds", "eval_seconds", "training_seconds", "wire_uplink_bytes",
            "wire_downlink_bytes", "payload_uplink_bytes", "payload_downlink_bytes")
    if rows:
        mean = {k: sum(r.get(k, 0.0) for r in rows) / len(rows) for k in keys}
        client_keys = ("upload_seconds", "download_seconds", "compute_seconds", "eval_seconds",
                       "wait_seconds", "soft_label_seconds", "train_seconds")
        cs = [c for r in rows for c in r["clients"]
              if c["status"] == ClientStatus.UPDATED] or [{}]
        per_client = {k: sum(c.get(k, 0.0) for c in cs) / len(cs) for k in client_keys}
        basis = "mean of the measured rounds"
    else:
        up = full_model_payload(config, settings.round.update_encoding)
        down = full_model_payload(config, settings.round.task_encoding)
        delay = profile.one_way_delay_s
        per_client = {"upload_seconds": profile.seconds_for(up, "up") + delay,
                      "download_seconds": profile.seconds_for(down, "down") + delay,
                      "compute_seconds": 0.0, "eval_seconds": 0.0, "wait_seconds": 0.0,
                      "soft_label_seconds": 0.0, "train_seconds": 0.0}
        mean = {"seconds": budget.estimated_round_s, "eval_seconds": 0.0,
                "training_seconds": budget.estimated_round_s,
                "wire_uplink_bytes": up * clients,
                "wire_downlink_bytes": down * clients, "payload_uplink_bytes": up * clients,
                "payload_downlink_bytes": down * clients}
        basis = "physical limit of the link (nothing measured)"
    start = rows[-1]["round"] + 1 if rows else 1
    extra = [{"round": start + i, **mean, "accuracy": None, "extrapolated": True,
              "basis": basis, "clients": [{"client_id": "mean", "status": EXTRAPOLATED,
                                           **per_client}]} for i in range(missing)]
    return rows + extra


class FieldRunner:
    """Runs the plan inside one set of namespaces; one server run per scenario and method."""

    def __init__(self, plan: FieldPlan) -> None:
        self.plan = plan
        self.overrides = server_overrides(plan)
        self.config, self.settings = load_server_config(plan.config, self.overrides)
        clients = plan.fleet.size if plan.fleet is not None else plan.clients
        if clients > self.config.data.num_clients:
            raise LpflError(f"{clients} field clients exceed data.num_clients="
                            f"{self.config.data.num_clients} in {plan.config}")
        if plan.fleet is None:
            self.scenarios = [Scenario(p.name, [p] * plan.clients)
                              for p in load_profiles(plan.links, plan.profiles)]
        else:
            layout = detect()
            reason = missing_cgroups(layout)
            if reason:
                raise NotPermitted(f"a fleet run emulates device speed with cgroups: {reason}")
            self.scenarios = [fleet_scenario(plan.fleet, self.config)]
        self.compute_estimate_s = 0.0

    def run(self) -> Path:
        """Every scenario and method; returns the report's path."""
        from lpfl.harness.field.report import write_field_report

        self.plan.out.mkdir(parents=True, exist_ok=True)
        written = []
        namespaces = Namespaces(max(s.clients for s in self.scenarios))
        with namespaces as links:
            for scenario in self.scenarios:
                checks = []
                for link, profile in zip(links, scenario.links, strict=True):
                    shape(link, profile)
                    checks += [asdict(m) | {"client": link.index, "profile": profile.name}
                               for m in verify(link, profile, seconds=self.plan.verify_seconds)]
                limits = [Limits(e.cpu_quota, e.memory_limit_mb) for e in scenario.emulations]
                with contextlib.ExitStack() as stack:
                    groups = (stack.enter_context(ClientGroups(namespaces.prefix, limits))
                              if limits else [])
                    wrappers = [g.exec_prefix() for g in groups] or [[] for _ in scenario.links]
                    for method in self.plan.methods:
                        written.append(self.run_one(namespaces, scenario, method, checks,
                                                    wrappers))
        return write_field_report(self.plan.out, self.plan.target, written)

    def run_one(self, namespaces: Namespaces, scenario: Scenario, method: str,
                checks: list[dict[str, Any]], wrappers: Sequence[list[str]]) -> Path:
        """One server run; writes ``OUT/<scenario>/<method>/field.json`` and returns it."""
        out = self.plan.out / scenario.name / method
        out.mkdir(parents=True, exist_ok=True)
        estimates = {p.name: (estimate_round_seconds(method, p, self.config, self.settings,
                                                     self.compute_estimate_s), p)
                     for p in scenario.links}
        estimate, slowest = max(estimates.values(), key=lambda e: e[0])
        budget = round_budget(method, self.plan.rounds, estimate, self.plan.time_budget_s)
        print(f"{scenario.name} / {method}: {budget.note}", flush=True)
        rounds: list[dict[str, Any]] = []
        chunks: dict[str, dict[str, list[Chunk]]] = {}
        if budget.measured > 0:
            rounds, chunks = self._serve(namespaces, scenario, method, budget, out, wrappers)
        ids = client_ids(scenario.clients)
        if scenario.emulations:
            rounds = with_emulations(rounds, dict(zip(ids, scenario.emulations, strict=True)))
        delays = {cid: p.one_way_delay_s for cid, p in zip(ids, scenario.links, strict=True)}
        rows = field_rows(rounds, chunks, delays,
                          self.settings.evaluation is EvaluationMode.INLINE)
        computes = [c["compute_seconds"] for r in rows for c in r["clients"]
                    if c["status"] == ClientStatus.UPDATED]
        if computes and lookup(method).trains is not Trains.FULL:
            self.compute_estimate_s = max(self.compute_estimate_s, max(computes))
        rows = extrapolate(rows, budget, slowest, self.config, self.settings, scenario.clients)
        document = {"profile": scenario.profile_document(), "method": method,
                    "clients": scenario.clients,
                    "rounds_requested": budget.requested, "rounds_measured": len(rounds),
                    "budget_note": budget.note, "shaping_check": checks,
                    "model": self.config.model.source,
                    "update_encoding": self.settings.round.update_encoding,
                    "task_encoding": self.settings.round.task_encoding,
                    "evaluation": self.settings.evaluation.value,
                    "close_after": self.settings.round.close_after,
                    "clients_per_round": self.config.federation.clients_per_round,
                    "full_model_update_bytes": full_model_payload(
                        self.config, self.settings.round.update_encoding),
                    "proxy_bytes": {cid: {d: sum(c.nbytes for c in cs) for d, cs in by.items()}
                                    for cid, by in chunks.items()},
                    "rounds": rows}
        if scenario.emulations:
            document["fleet"] = {"name": scenario.name, "clients": {
                cid: asdict(e) for cid, e in zip(ids, scenario.emulations, strict=True)}}
            document["calibration"] = scenario.calibration
        path = out / "field.json"
        path.write_text(json.dumps(document, indent=1), encoding="utf-8")
        return path

    def _serve(self, namespaces: Namespaces, scenario: Scenario, method: str,
               budget: RoundBudget, out: Path, wrappers: Sequence[list[str]]
               ) -> tuple[list[dict[str, Any]], dict[str, dict[str, list[Chunk]]]]:
        """One server and its clients; every process is tracked in the run's record, so a
        sweep after a ``kill -9`` of this process can stop them. Client ``i``'s command starts
        with ``wrappers[i]`` (its cgroup, in a fleet)."""
        links = namespaces.links[:scenario.clients]
        ids = client_ids(scenario.clients)
        tokens, tokens_file = prepare_run_dir(out, ids)
        port = free_port()
        deadline_s = max(self.settings.round.deadline_s, 3 * budget.estimated_round_s + 120)
        settings = [*self.overrides, f"server.port={port}", f"server.run_dir='{out}'",
                    f"server.tokens_file='{tokens_file}'",
                    f"server.round.min_clients={len(links)}",
                    f"server.round.deadline_s={deadline_s}",
                    f"federation.rounds={budget.measured}", f"run.methods=['{method}']"]
        set_args = [arg for s in settings for arg in ("--set", s)]
        # The clients read the run file too: they get the run sections with the overrides.
        client_config = out / "run.toml"
        run_config, _ = load_server_config(self.plan.config, settings)
        write_run_file(run_config, client_config)
        cli = [sys.executable, "-m", "lpfl.cli"]
        results = out / "results.json"
        specs = [(link.host_ip, profile.one_way_delay_s)
                 for link, profile in zip(links, scenario.links, strict=True)]
        group = ProxyGroup(specs, "127.0.0.1", port)
        with (out / "server.log").open("wb") as server_log, group as proxy_ports:
            server = subprocess.Popen([*cli, "server", "--config", str(self.plan.config),
                                       *set_args], stdout=server_log, stderr=subprocess.STDOUT)
            namespaces.track(server.pid)
            procs: list[subprocess.Popen[bytes]] = []
            try:
                wait_for_port(port, server, timeout_s=300)
                for link, cid, pport, wrapper in zip(links, ids, proxy_ports, wrappers,
                                                     strict=True):
                    env = {**os.environ, "LPFL_TOKEN": tokens[cid]}
                    with (out / f"{cid}.log").open("wb") as log_file:
                        procs.append(subprocess.Popen(
                            [*wrapper, *link.exec_prefix(), *cli, "client", "--server",
                             f"ws://{link.host_ip}:{pport}", "--client-id", cid, "--config",
                             str(client_config)], stdout=log_file, stderr=subprocess.STDOUT,
                            env=env))
                    namespaces.track(procs[-1].pid)
                watch_rounds(server, results, budget.measured, self.plan.run_timeout_s)
            finally:
                stop_processes([*procs, server])
            chunks = {cid: p.chunks for cid, p in zip(ids, group.proxies, strict=True)}
        return read_rounds(results), chunks


def server_overrides(plan: FieldPlan) -> list[str]:
    """The plan's overrides, with ``server.evaluation='background'`` added for a fleet whose run
    file and overrides leave it unset and that has no accuracy guard. A combination the server
    refuses is refused here, with the server's message."""
    overrides = list(plan.overrides)
    _, settings = load_server_config(plan.config, overrides)
    chosen = "evaluation" in read_toml(plan.config).get("server", {}) or any(
        parse_override(o)[0].replace("-", "_") == "server.evaluation" for o in overrides)
    if plan.fleet is not None and not chosen and not settings.round.guards_accuracy:
        overrides.append(f"server.evaluation='{EvaluationMode.BACKGROUND.value}'")
    return overrides


def client_ids(count: int) -> list[str]:
    """The ids of a run's clients (a fleet's :meth:`~lpfl.fleet.Fleet.assign` uses the same)."""
    return [f"client-{i}" for i in range(count)]


def fleet_scenario(fleet: Fleet, config: RunConfig) -> Scenario:
    """The fleet's clients with their links, devices and CPU quotas, from a calibration of
    this host on the run's model (measured now, written into every ``field.json``)."""
    assignments = fleet.assign()
    profiles = {p.name: p for p in load_profiles(fleet.link_file, fleet.link_names())}
    devices = {a.device: load_device_profile(a.device) for a in assignments}
    host = measure_host(config)
    quotas = {name: cpu_quota(host, d.speed) for name, d in devices.items()}
    print(f"calibration on {host.cpu_model}: a training step of {host.tokens_per_step} tokens "
          f"takes {host.train_step_s:.3f} s; CPU quotas "
          + ", ".join(f"{n}={'none' if q is None else f'{q:.3f}'}" for n, q in quotas.items()),
          flush=True)
    emulations = [ClientEmulation(a.device, a.link, quotas[a.device],
                                  devices[a.device].memory_budget_mb) for a in assignments]
    calibration = asdict(host) | {"train_tokens_per_s": host.train_tokens_per_s,
                                  "cpu_quotas": quotas,
                                  "speed_references": {n: asdict(d.speed) if d.speed else None
                                                       for n, d in devices.items()}}
    return Scenario(fleet.name, [profiles[a.link] for a in assignments], emulations,
                    calibration)


def with_emulations(rounds: Sequence[dict[str, Any]],
                    emulations: Mapping[str, ClientEmulation]) -> list[dict[str, Any]]:
    """The server's round records with each client's emulation added (clients the fleet does
    not know keep none)."""
    out = []
    for document in rounds:
        record = RoundRecord.from_dict(document)
        clients = [replace(c, emulation=emulations.get(c.client_id)) for c in record.clients]
        out.append(document | replace(record, clients=clients).to_dict())
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}"
                               for k, v in value.items()) + "}"
    raise LpflError(f"cannot write {value!r} to TOML")


def write_run_file(config: RunConfig, dest: Path) -> None:
    """The run sections of ``config`` as a TOML run file (what the clients of a run read)."""
    lines = []
    for section, table in config.to_dict().items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in table.items()
                  if value is not None]
        lines.append("")
    dest.write_text("\n".join(lines), encoding="utf-8")


def field(plan: FieldPlan) -> Path:
    """Carry out ``lpfl field``; raises :class:`NotPermitted` before touching anything when
    this host cannot make namespaces."""
    reason = missing_privileges()
    if reason:
        raise NotPermitted(reason)
    return FieldRunner(plan).run()
