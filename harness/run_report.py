"""``report.md`` and ``report.png`` for a websocket run, from the server's ``results.json``.

The server's rounds are reported as one run by the shared writer (:func:`lpfl.report.
render_report`): test accuracy, bytes clients sent and received as measured on their connections
(``wire_*``) next to the tensor payloads, the wire overhead, and what FP-FL clients would have
sent in the same rounds (the whole model in the run's update encoding, per accepted update).
"""

from __future__ import annotations

from pathlib import Path

from lpfl.config import RunConfig
from lpfl.report import render_report
from lpfl.results import read_document
from lpfl.simulate import base_parameters
from lpfl.tensors import payload_nbytes


def full_model_payload(config: RunConfig, encoding: str) -> int:
    """Bytes of one FP-FL update: every parameter of the base model (tied weights once)."""
    return payload_nbytes(base_parameters(config.model), encoding)


def write_run_report(out: Path, config: RunConfig, encoding: str) -> Path:
    """Write the report of the run whose server wrote ``out/results.json``."""
    runs = read_document(out / "results.json")["runs"]
    intro = (f"Model `{config.model.source}`, {config.data.num_clients} clients, "
             f"{len(runs[0]['rounds']) if runs else 0} rounds, updates encoded as {encoding}.")
    return render_report(out, runs, "lpfl federated run (websockets)", [intro],
                         full_model_payload(config, encoding))
