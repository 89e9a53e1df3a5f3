"""The privacy benchmark (``bench/privacy.py``) at a tiny size: it runs end to end and its
numbers add up."""

from __future__ import annotations

import torch

from bench import privacy
from lpfl import secagg


def test_a_tiny_benchmark_measures_both_options_and_reports() -> None:
    reference = {"a.lora_A.weight": torch.zeros(4, 6), "a.lora_B.weight": torch.zeros(6, 4)}
    results = privacy.measure([3, 5], reference)
    assert results["parameters"] == 48
    for run in results["runs"]:
        n = run["clients"]
        plain, masked = run["plain"], run["secure_aggregation"]
        dropped = run["secure_aggregation_dropouts"]
        # The masked input is one uint32 a parameter plus the weight; keys and shares add a
        # sealed share pair (92 bytes, base64) for every peer.
        vector = len(secagg.encode_vector(secagg.quantize(torch.zeros(49).numpy(), 0)))
        assert masked["uplink_bytes"] > vector + (n - 1) * 124
        assert masked["downlink_bytes"] > plain["downlink_bytes"]
        assert dropped["dropped"] == 1 and masked["dropped"] == 0
        assert masked["threshold"] == n // 2 + 1
        assert min(masked["client_seconds"], masked["server_seconds"],
                   masked["shamir_combine_seconds"]) > 0
        assert run["differential_privacy"]["epsilon_after_one_round"] > 0
    report = privacy.report(results)
    assert "| 5 |" in report and results["environment"]["cpu"] in report
