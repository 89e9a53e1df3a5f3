"""The real LP-FL trainer of an edge client, built from the run file and the client id.

The client loads the same base model and prompt as the server. Its data is either

* the device's own file (``--data FILE``, :func:`lpfl.data.load_device_file`): labeled rows
  train, unlabeled rows are soft-labelled; only adapter updates and counts leave the device; or
* for experiments, its share of the run's corpus: a client id ``client-N`` names the N-th client
  of the run's partition, carved exactly as ``lpfl simulate`` carves it.
"""

from __future__ import annotations

import argparse
import logging
import re
import zlib
from pathlib import Path

from lpfl.backends import check_backend, program_runtime
from lpfl.client_round import LocalClient
from lpfl.config import RunConfig
from lpfl.data import Example, load_device_file
from lpfl.errors import ConfigError, LpflError
from lpfl.model.loading import model_id_of
from lpfl.model.prompt import PromptModel
from lpfl.runtime import ClientRuntime
from lpfl.simulate import federated_data, fresh_prompt_model, method_mode
from lpfl.transport import load_server_config

log = logging.getLogger(__name__)


def client_index(client_id: str, num_clients: int) -> int:
    """N from ``client-N``; an error names the valid ids."""
    match = re.fullmatch(r"client-(\d+)", client_id)
    if match is None or int(match.group(1)) >= num_clients:
        raise LpflError(f"client id {client_id!r} does not name a client of this run: use "
                        f"client-0 … client-{num_clients - 1} (data.num_clients={num_clients}), "
                        "or train on this device's own file with --data FILE")
    return int(match.group(1))


def device_index(client_id: str) -> int:
    """A stable number for any client id (N for ``client-N``), seeding its batch order."""
    match = re.fullmatch(r"client-(\d+)", client_id)
    return int(match.group(1)) if match else zlib.crc32(client_id.encode()) & 0x7FFFFFFF


def client_data(config: RunConfig, client_id: str, data_file: Path | None
                ) -> tuple[int, list[Example], list[Example]]:
    """The client's index, labeled and unlabeled examples: from the device's ``data_file``, or
    without one its ``client-N`` share of the run's corpus."""
    if data_file is not None:
        labeled, unlabeled = load_device_file(data_file, config.prompt.num_classes,
                                              config.data.label_names)
        log.info("client %s trains on %s: %d labeled and %d unlabeled rows (the texts stay on "
                 "this device)", client_id, data_file, len(labeled), len(unlabeled))
        return device_index(client_id), labeled, unlabeled
    index = client_index(client_id, config.data.num_clients)
    data = federated_data(config, config.run.seeds[0])
    return index, list(data.labeled[index]), list(data.unlabeled[index])


def lpfl_trainer(args: argparse.Namespace) -> LocalClient:
    """Build the client's runtime (``--backend``, ``--artefact``) and data (``--data``, or the
    ``--client-id`` share of the corpus) from ``--config``;
    with ``--profile``, refuse to start if a round would not fit the device's memory budget."""
    if args.config is None:
        raise ConfigError("lpfl client needs --config RUN.toml (the same file as the server)")
    config, _ = load_server_config(args.config)  # the run sections; [server] is the server's
    seed = config.run.seeds[0]
    index, labeled, unlabeled = client_data(config, args.client_id, getattr(args, "data", None))
    check_backend(args.backend, args.artefact)

    def eager_model() -> PromptModel:
        return fresh_prompt_model(config, method_mode(config.run.methods[0]), seed)

    model: PromptModel | ClientRuntime
    if args.backend == "eager":
        model = eager_model()
    else:
        model = program_runtime(args.backend, args.artefact, model_id_of(config.model),
                                eager_model, args.eager_training, prompt=config.prompt,
                                max_seq_len=config.model.max_length)
    client = LocalClient(args.client_id, index, model, labeled, unlabeled,
                         config.run.eval_batch_size)
    if args.profile is not None:
        from lpfl.edge_client.budget import enforce_profile

        enforce_profile(client, config, args.profile)
    return client
