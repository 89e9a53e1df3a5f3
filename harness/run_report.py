"""``report.md`` and ``report.png`` for a websocket run, from the server's ``results.json``.

The server's rounds are reported as one run by the shared writer (:func:`lpfl.report.
render_report`): test accuracy, bytes clients sent and received as measured on their connections
(``wire_*``) next to the tensor payloads, the wire overhead, and what FP-FL clients would have
sent in the same rounds (the whole model in the run's update encoding, per accepted update).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lpfl.config import RunConfig
from lpfl.records import RoundRecord
from lpfl.report import render_report
from lpfl.simulate import base_parameters
from lpfl.tensors import payload_nbytes


def full_model_payload(config: RunConfig, encoding: str) -> int:
    """Bytes of one FP-FL update: every parameter of the base model (tied weights once)."""
    return payload_nbytes(base_parameters(config.model), encoding)


def served_run(config: RunConfig, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The server's recorded rounds (``results.json``'s ``rounds``) as one run of the report:
    the method and seed a server runs (the first of each in the run config), each round's
    summary with its wire bytes."""
    rows = [RoundRecord.from_dict(r).summary(wire=True) for r in rounds]
    return {"method": config.run.methods[0], "seed": config.run.seeds[0],
            "final_accuracy": rows[-1]["accuracy"] if rows else None, "rounds": rows}


def write_run_report(out: Path, config: RunConfig, encoding: str) -> Path:
    """Write the report of the run whose server wrote ``out/results.json``."""
    rounds = json.loads((out / "results.json").read_text(encoding="utf-8"))["rounds"]
    intro = (f"Model `{config.model.source}`, {config.data.num_clients} clients, "
             f"{len(rounds)} rounds, updates encoded as {encoding}.")
    return render_report(out, [served_run(config, rounds)], "lpfl federated run (websockets)",
                         [intro], full_model_payload(config, encoding))
