"""The real LP-FL trainer of an edge client, built from the run file and the client id.

A client id ``client-N`` names the N-th client of the run's partition: the client loads the same
base model and prompt as the server and takes its own share of the labeled and unlabeled data
(in a deployment the data would be the device's own; here it is carved from the packaged corpus
exactly as ``lpfl simulate`` carves it).
"""

from __future__ import annotations

import argparse
import re

from lpfl.backends import check_backend, program_runtime
from lpfl.client_round import LocalClient
from lpfl.errors import ConfigError, LpflError
from lpfl.model.loading import model_id_of
from lpfl.model.prompt import PromptModel
from lpfl.runtime import ClientRuntime
from lpfl.simulate import federated_data, fresh_prompt_model, method_mode
from lpfl.transport import load_server_config


def client_index(client_id: str, num_clients: int) -> int:
    """N from ``client-N``; an error names the valid ids."""
    match = re.fullmatch(r"client-(\d+)", client_id)
    if match is None or int(match.group(1)) >= num_clients:
        raise LpflError(f"client id {client_id!r} does not name a client of this run: use "
                        f"client-0 … client-{num_clients - 1} (data.num_clients={num_clients})")
    return int(match.group(1))


def lpfl_trainer(args: argparse.Namespace) -> LocalClient:
    """Build the client's runtime (``--backend``, ``--artefact``) and data share from
    ``--config`` and ``--client-id``;
    with ``--profile``, refuse to start if a round would not fit the device's memory budget."""
    if args.config is None:
        raise ConfigError("lpfl client needs --config RUN.toml (the same file as the server)")
    config, _ = load_server_config(args.config)  # the run sections; [server] is the server's
    index = client_index(args.client_id, config.data.num_clients)
    seed = config.run.seeds[0]
    data = federated_data(config, seed)
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
    client = LocalClient(args.client_id, index, model, data.labeled[index],
                         data.unlabeled[index], config.run.eval_batch_size)
    if args.profile is not None:
        from lpfl.edge_client.budget import enforce_profile

        enforce_profile(client, config, args.profile)
    return client
