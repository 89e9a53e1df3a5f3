"""``tc tbf`` shaping on a veth pair measures within ±15 % of the profile, and a link that does
not match its profile aborts with the measured figure."""

from __future__ import annotations

import dataclasses

import pytest

from lpfl.harness.field.netns import Namespaces, missing_privileges
from lpfl.harness.field.shaping import ShapingError, shape, verify
from lpfl.profiles.links import LINKS_FILE, load_profiles

pytestmark = pytest.mark.skipif(bool(missing_privileges()),
                                reason=missing_privileges() or "root and iproute2 present")



def test_shaped_rates_measure_within_tolerance_and_a_wrong_one_aborts() -> None:
    (lte,) = load_profiles(LINKS_FILE, ["lte"])
    with Namespaces(1) as (link,):
        shape(link, lte)
        measured = verify(link, lte, seconds=1.0, attempts=3)
        assert {m.direction for m in measured} == {"up", "down"}
        assert all(abs(m.ratio - 1) <= 0.15 for m in measured), measured
        claims_more = dataclasses.replace(lte, uplink_mbit=lte.uplink_mbit * 2)
        with pytest.raises(ShapingError, match=r"uplink measured \d+\.\d+ Mbit/s"):
            verify(link, claims_more, seconds=1.0, attempts=1)
