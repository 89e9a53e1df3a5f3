"""Device profiles: the shipped ones load and name real link profiles; bad ones say what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from lpfl.errors import ConfigError
from lpfl.profiles.devices import DEVICES_DIR, DeviceProfile, load_device_profile
from lpfl.profiles.links import LINKS_FILE, load_profiles

GOOD = {"name": "p", "kind": "phone", "cpu_arch": "aarch64", "memory_budget_mb": 1024,
        "threads": 4, "link": "lte", "source": "a spec sheet"}


def test_the_shipped_profiles_cover_the_issue_and_name_known_links() -> None:
    profiles = {p.stem: load_device_profile(p) for p in DEVICES_DIR.glob("*.toml")}
    assert set(profiles) == {"emulator-x86_64", "emulator-arm64", "phone-midrange",
                             "jetson-orin-nano"}
    links = {link.name for link in load_profiles(LINKS_FILE)}
    for stem, profile in profiles.items():
        assert profile.name == stem
        assert profile.link in links
    assert profiles["jetson-orin-nano"].route == "native"
    assert profiles["emulator-x86_64"].cpu_arch == "x86_64"
    assert profiles["jetson-orin-nano"].memory_budget_bytes == 4096 * 2**20


def test_a_profile_loads_by_bare_name() -> None:
    assert load_device_profile("phone-midrange").threads == 4


@pytest.mark.parametrize(("change", "message"), [
    ({"kind": "tablet"}, "kind='tablet'; use one of emulator, phone, jetson"),
    ({"cpu_arch": "armv7l"}, "cpu_arch='armv7l'"),
    ({"memory_budget_mb": 8}, "memory_budget_mb=8 must be in"),
    ({"threads": 0}, "threads=0 must be in"),
    ({"source": " "}, "cite where the numbers come from"),
    ({"device_dir": "lpfl"}, "must be absolute paths on the device"),
])
def test_bad_values_say_what_to_fix(change: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DeviceProfile(**{**GOOD, **change})  # type: ignore[arg-type]


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('name = "p"\nkind = "phone"\n')
    with pytest.raises(ConfigError, match=f"{path}: .*missing"):
        load_device_profile(path)
    path.write_text('name = "p"\nram = 3\n')
    with pytest.raises(ConfigError, match="unknown key ram"):
        load_device_profile(path)
