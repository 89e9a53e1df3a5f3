"""The fleet of a field run: validated on construction, expanded deterministically, recorded
per client; and the CPU quota a device's speed reference gives."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from lpfl.config import load_config
from lpfl.errors import ConfigError
from lpfl.fleet import Fleet, FleetGroup, load_fleet
from lpfl.harness.field.calibrate import HostSpeed, cpu_quota
from lpfl.harness.field.run import field_rows, with_emulations
from lpfl.profiles.devices import SpeedReference, load_device_profile, shipped_device_names
from lpfl.records import ClientEmulation, ClientOutcome, ClientRecord, ClientStatus, RoundRecord

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _fleet(*groups: FleetGroup, seed: int = 0) -> Fleet:
    return Fleet(groups=tuple(groups), seed=seed)


def test_the_shipped_fleets_expand_to_their_mixes() -> None:
    mostly_lte = load_fleet(CONFIGS / "fleet_mostly_lte.toml")
    heavy = load_fleet(CONFIGS / "fleet_3g_heavy.toml")
    assert mostly_lte is not None and heavy is not None
    assert Counter((a.device, a.link) for a in mostly_lte.assign()) == {
        ("phone-midrange", "lte"): 2, ("phone-midrange", "3g"): 1,
        ("jetson-orin-nano", "wifi"): 1}
    assert Counter(a.link for a in heavy.assign()) == {"3g": 3, "lte": 1}
    assert [a.client_id for a in heavy.assign()] == [f"client-{i}" for i in range(4)]
    # The run sections still load: the [field] table is lpfl field's alone.
    assert load_config(CONFIGS / "fleet_3g_heavy.toml").data.num_clients == heavy.size


def test_expansion_is_seeded() -> None:
    group = FleetGroup(count=20, device="phone-midrange", links={"lte": 0.5, "3g": 0.5})
    orders = {seed: [a.link for a in _fleet(group, seed=seed).assign()] for seed in range(4)}
    assert orders[0] == [a.link for a in _fleet(group, seed=0).assign()]
    assert len({tuple(o) for o in orders.values()}) > 1, "the seed does not change the order"
    assert all(Counter(o) == {"lte": 10, "3g": 10} for o in orders.values())


def test_largest_remainder_splits_a_group() -> None:
    group = FleetGroup(count=3, device="phone-midrange", links={"lte": 0.7, "3g": 0.3})
    assert Counter(a.link for a in _fleet(group).assign()) == {"lte": 2, "3g": 1}


def test_unknown_profiles_are_refused_with_the_known_names() -> None:
    with pytest.raises(ConfigError, match="unknown device profile 'pixel-9'; known: "
                       + ", ".join(shipped_device_names())):
        _fleet(FleetGroup(count=1, device="pixel-9", links={"lte": 1.0}))
    with pytest.raises(ConfigError, match="unknown link profile 5g; known: lte, 3g, wifi"):
        _fleet(FleetGroup(count=1, device="phone-midrange", links={"5g": 1.0}))


@pytest.mark.parametrize(("count", "links", "message"), [
    (2, {"lte": 0.7, "3g": 0.2}, "sum to 0.9; they must sum to 1"),
    (2, {"lte": 1.2, "3g": -0.2}, r"must be in \(0, 1\]"),
    (0, {"lte": 1.0}, "count=0 must be >= 1"),
    (1, {}, "links is empty"),
])
def test_a_bad_group_is_refused(count: int, links: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        FleetGroup(count=count, device="phone-midrange", links=links)


def test_a_run_file_fleet_is_checked_and_named_in_errors(tmp_path: Path) -> None:
    run_file = tmp_path / "run.toml"
    run_file.write_text("[field.fleet]\nname = 'x'\n[[field.fleet.groups]]\ncount = 2\n"
                        "device = 'phone-midrange'\nlinks = { lte = 0.5, 3g = 0.4 }\n")
    with pytest.raises(ConfigError, match=f"{run_file}: .*must sum to 1"):
        load_fleet(run_file)
    run_file.write_text("[field]\nfleets = 1\n")
    with pytest.raises(ConfigError, match=r"unknown key field\.fleets; known: fleet"):
        load_fleet(run_file)
    run_file.write_text("[model]\nsource = 'tiny-llama'\n")
    assert load_fleet(run_file) is None


def test_a_device_profile_file_with_a_speed_reference_joins_a_fleet(tmp_path: Path) -> None:
    profile = tmp_path / "slow-board.toml"
    profile.write_text('name = "slow-board"\nkind = "jetson"\ncpu_arch = "aarch64"\n'
                       'memory_budget_mb = 512\nthreads = 1\nlink = "wifi"\nroute = "native"\n'
                       'source = "a test fixture"\n[speed]\nmodel_params_m = 100.0\n'
                       'train_tokens_per_s = 50.0\nsource = "a test fixture"\n')
    assert load_device_profile(profile).speed == SpeedReference(100.0, 50.0, "a test fixture")
    fleet = _fleet(FleetGroup(count=1, device=str(profile), links={"wifi": 1.0}))
    assert fleet.assign()[0].device == str(profile)


def test_the_quota_is_host_time_over_device_time_capped() -> None:
    host = HostSpeed("cpu", 1, model_params=200_000_000, tokens_per_step=400,
                     train_step_s=2.0, score_texts=8, soft_label_s=1.0, repeats=3)
    # On a 100M model the device trains 100 tokens/s, so 50 tokens/s on the 200M model: a
    # 400-token step takes it 8 s against the host's 2 s.
    assert cpu_quota(host, SpeedReference(100.0, 100.0, "s"), cores=2) == pytest.approx(0.25)
    assert cpu_quota(host, SpeedReference(100.0, 1e6, "s"), cores=2) == 2.0
    assert cpu_quota(host, SpeedReference(100.0, 1e-3, "s"), cores=2) == 0.05
    assert cpu_quota(host, None) is None


def test_every_client_row_carries_its_device_link_and_quota() -> None:
    emulations = {"client-0": ClientEmulation("phone-midrange", "3g", 0.25, 1536),
                  "client-1": ClientEmulation("jetson-orin-nano", "wifi", None, 4096)}
    outcome = ClientOutcome(ClientStatus.UPDATED, num_examples=4, metrics={"train_loss": 1.0})
    served = RoundRecord(1, 1, 3.0, {"accuracy": 0.5}, {}, [
        ClientRecord("client-0", outcome), ClientRecord("client-1", outcome)]).to_dict()
    rounds = with_emulations([served], emulations)
    assert RoundRecord.from_dict(rounds[0]).clients[0].emulation == emulations["client-0"]
    rows = field_rows(rounds, {}, {"client-0": 0.075, "client-1": 0.0075})
    assert [c["emulation"] for c in rows[0]["clients"]] == [
        {"device": "phone-midrange", "link": "3g", "cpu_quota": 0.25, "memory_limit_mb": 1536},
        {"device": "jetson-orin-nano", "link": "wifi", "cpu_quota": None,
         "memory_limit_mb": 4096}]


def test_an_emulation_is_validated() -> None:
    with pytest.raises(ValueError, match="cpu_quota 0 must be"):
        ClientEmulation("phone-midrange", "lte", 0)
