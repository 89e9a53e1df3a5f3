"""The Flower ClientApp: lpfl's client round on one partition of the run's data.

A node's ``partition-id`` (Flower's node config; the simulation engine sets it, a SuperNode gets
it with ``--node-config "partition-id=0 num-partitions=4"``) names the lpfl client
``client-<id>``, whose labeled and unlabeled texts are the ones ``lpfl simulate`` gives it. The
node config may also choose where the round runs, as ``lpfl client`` does: ``backend`` (eager,
executorch or onnxruntime), ``artefact`` (the folder ``lpfl export`` made) and
``eager-training``. The runtime and the data are built once per process and shared by every
virtual client it runs.
"""

from __future__ import annotations

import functools
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from lpfl.backends import check_backend, program_runtime
from lpfl.client_round import LocalClient
from lpfl.data import FederatedData
from lpfl.errors import ConfigError
from lpfl.flower.messages import hello_content, read_task, update_content
from lpfl.flower.run_config import FlowerRun
from lpfl.model.loading import model_id_of
from lpfl.model.prompt import PromptModel
from lpfl.runtime import ClientRuntime
from lpfl.simulate import federated_data, fresh_prompt_model, method_mode

app = ClientApp()


@functools.cache
def _shared(config: Path, method: str, seed: int, backend: str, artefact: str,
            eager_training: bool) -> tuple[PromptModel | ClientRuntime, FederatedData, int]:
    run, _ = FlowerRun(config=config, method=method, seed=seed).load()
    folder = Path(artefact) if artefact else None
    check_backend(backend, folder)

    def eager_model() -> PromptModel:
        return fresh_prompt_model(run, method_mode(method), seed)

    model: PromptModel | ClientRuntime = eager_model() if backend == "eager" else program_runtime(
        backend, folder or Path(), model_id_of(run.model), eager_model, eager_training,
        prompt=run.prompt, max_seq_len=run.model.max_length)
    return model, federated_data(run, seed), run.run.eval_batch_size


def local_client(context: Context) -> LocalClient:
    """This node's lpfl client, from the run config and its node config."""
    flower_run = FlowerRun.from_run_config(context.run_config)
    node = context.node_config
    model, data, eval_batch = _shared(
        flower_run.config.resolve(), flower_run.method, flower_run.seed,
        str(node.get("backend", "eager")), str(node.get("artefact", "")),
        str(node.get("eager-training", "false")).lower() == "true")
    if "partition-id" not in context.node_config:
        raise ConfigError("this node has no partition-id in its node config: start it with "
                          "--node-config \"partition-id=0 num-partitions=N\"")
    index = int(str(context.node_config["partition-id"]))
    count = len(data.labeled)
    declared = context.node_config.get("num-partitions", count)
    if not 0 <= index < count or int(str(declared)) != count:
        raise ConfigError(f"node partition-id={index} num-partitions={declared}: the run file "
                          f"splits the data over {count} clients (data.num_clients)")
    return LocalClient(f"client-{index}", index, model, data.labeled[index],
                       data.unlabeled[index], eval_batch)


@app.query()
def hello(message: Message, context: Context) -> Message:
    """Who this node is in lpfl's terms: its client id and capabilities."""
    client = local_client(context)
    return Message(hello_content(client.client_id, client.capabilities()), reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    """One lpfl client round from the task's global state and settings."""
    task = read_task(message.content)
    result = local_client(context).train_round(task.round, task.state, task.settings)
    return Message(update_content(result.state, task.update_encoding, result.num_examples,
                                  result.metrics), reply_to=message)
