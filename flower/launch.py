"""One command for a Flower run of a run file: a SuperLink, its SuperNodes, ``flwr run``.

* ``simulation``: a SuperLink with Flower's simulation runtime, which runs ``--clients`` virtual
  ClientApps (Ray backend) in this machine's processes.
* ``deployment``: a SuperLink and ``--clients`` SuperNode processes on loopback, each a real
  Flower client node with its own ``partition-id``.

Both then submit the lpfl Flower App (``flower/app``) with ``flwr run`` and wait for it. Every
process runs in its own process group under a private ``FLWR_HOME`` inside the output folder and
is stopped on the way out, whatever the exit; their logs stay in ``OUT/logs``. The results
(``results.json`` and ``report.md``) are the ServerApp's, in the format of ``lpfl simulate``.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from lpfl.backends import check_backend
from lpfl.errors import ConfigError, LpflError
from lpfl.flower.run_config import FlowerRun, final_state_path
from lpfl.tls import make_self_signed_cert

log = logging.getLogger(__name__)

CONNECTION = "lpfl"
"""The SuperLink connection's name in the private Flower configuration."""


class Mode(enum.Enum):
    SIMULATION = "simulation"
    DEPLOYMENT = "deployment"


class LaunchError(LpflError):
    """A Flower process did not start, or the run failed."""


@dataclass(frozen=True)
class FlowerLaunch:
    """What to run: the lpfl run file, how, with how many clients, and where results go."""

    run_file: Path
    mode: Mode
    clients: int
    out: Path
    method: str = "lp-fl"
    seed: int = 0
    timeout_s: float = 3600.0
    """How long the whole run may take."""
    node_timeout_s: float = 600.0
    """How long the ServerApp waits for the nodes to appear and for each round's replies."""
    tls: bool = True
    """Serve the SuperLink over TLS with a self-signed certificate made for the run (in
    ``OUT/flower-home/tls``), which the SuperNodes and ``flwr run`` are told to trust; False
    runs it insecure (plain HTTP on loopback)."""
    backend: str = "eager"
    """Where the SuperNodes' client rounds run (as ``lpfl client --backend``)."""
    artefact: Path | None = None
    """The exported artefact a program backend runs (as ``lpfl client --artefact``)."""
    eager_training: bool = False
    node_auth: bool = True
    """In a deployment, the SuperLink admits only SuperNodes whose public keys were registered
    for the run (a key pair made per node in ``OUT/flower-home/nodes``)."""

    def __post_init__(self) -> None:
        if self.backend != "eager" and self.mode is not Mode.DEPLOYMENT:
            raise ConfigError(f"--backend {self.backend}: program backends run on SuperNodes; "
                              "use the deployment mode (the simulation engine runs eagerly)")
        check_backend(self.backend, self.artefact)
        config, _ = self.flower_run().load()  # the run file and method are checked up front
        if self.clients != config.data.num_clients:
            raise ConfigError(f"--clients {self.clients}: {self.run_file} splits its data over "
                              f"data.num_clients = {config.data.num_clients} clients; start "
                              "that many (or change the run file)")

    def flower_run(self) -> FlowerRun:
        """What the ServerApp and ClientApps are told (Flower's run config)."""
        return FlowerRun(self.run_file.resolve(), self.method, self.seed, self.out.resolve(),
                         self.node_timeout_s)


def app_folder() -> Path:
    """The lpfl Flower App (its ``pyproject.toml`` names the ServerApp and ClientApp)."""
    return Path(str(resources.files("lpfl.flower") / "app"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _tool(name: str) -> str:
    """A Flower executable next to this Python (the environment lpfl is installed in)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise LaunchError(f"{name} is not installed next to {sys.executable}: install lpfl's "
                          "Flower extra, pip install 'lpfl[flower]'")
    return str(path)


def _wait_for_port(port: int, process: subprocess.Popen[bytes], what: str, log_file: Path,
                   timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LaunchError(f"{what} exited with code {process.returncode}; see {log_file}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise LaunchError(f"{what} did not listen on port {port} within {timeout_s:.0f} s; see "
                      f"{log_file}")


class Processes:
    """Child processes, each in its own process group, all stopped on :meth:`stop_all`."""

    def __init__(self, logs: Path, env: dict[str, str]) -> None:
        self.logs = logs
        self.env = env
        self.running: list[tuple[str, subprocess.Popen[bytes]]] = []
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, command: Sequence[str]) -> subprocess.Popen[bytes]:
        log.debug("starting %s: %s", name, shlex.join(command))
        with open(self.logs / f"{name}.log", "wb") as out:
            process = subprocess.Popen(list(command), stdout=out, stderr=subprocess.STDOUT,
                                       env=self.env, start_new_session=True)
        self.running.append((name, process))
        return process

    def stop_all(self) -> None:
        for _, process in reversed(self.running):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _, process in self.running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.running.clear()


Relay = Callable[[int], AbstractContextManager[int]]
"""Given the SuperLink's port, a running relay to it (e.g. a shaped link, or a proxy that
counts bytes) and the port SuperNodes should use instead."""


@contextlib.contextmanager
def flower_processes(launch: FlowerLaunch,
                     relay: Relay | None = None) -> Iterator[tuple[Processes, int]]:
    """A running SuperLink (and SuperNodes for a deployment, through ``relay`` if given);
    yields the processes and the SuperLink's port. Everything started is stopped on the way
    out."""
    home = (launch.out / "flower-home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    security = ["--insecure"]
    trust = "insecure = true"
    node_trust = ["--insecure"]
    if launch.tls:
        cert, key = make_self_signed_cert(home / "tls")
        security = ["--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
                    "--ssl-ca-certfile", str(cert)]
        trust = f'root-certificates = "{cert}"'
        node_trust = ["--root-certificates", str(cert)]
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "127.0.0.1:{port}"\n{trust}\n', encoding="utf-8")
    # Flower's processes start further Flower executables (flower-superexec) by name.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "FLWR_HOME": str(home), "PATH": path}
    processes = Processes(launch.out / "logs", env)
    stack = contextlib.ExitStack()
    try:
        # One HTTP port serves the SuperLink's Control, Fleet and runtime APIs.
        superlink = [_tool("flower-superlink"), *security, "--isolation", "subprocess",
                     "--disable-runtime-dependency-installation",
                     "--host", "127.0.0.1", "--port", str(port)]
        if launch.mode is Mode.SIMULATION:
            superlink.append("--simulation")
        elif launch.node_auth:
            superlink.append("--enable-supernode-auth")
        link = processes.start("superlink", superlink)
        _wait_for_port(port, link, "flower-superlink", processes.logs / "superlink.log")
        if launch.mode is Mode.DEPLOYMENT:
            node_port = stack.enter_context(relay(port)) if relay is not None else port
            for index in range(launch.clients):
                identity: list[str] = []
                if launch.node_auth:
                    key = register_node(home / "nodes", index, env, processes.logs)
                    identity = ["--auth-supernode-private-key", str(key)]
                processes.start(f"supernode-{index}", [
                    _tool("flower-supernode"), *node_trust, *identity, "--superlink",
                    f"127.0.0.1:{node_port}",
                    "--isolation", "subprocess", "--node-config", node_config(launch, index),
                    "--host", "127.0.0.1", "--port", str(free_port())])
        yield processes, port
    finally:
        processes.stop_all()
        stack.close()


def register_node(folder: Path, index: int, env: Mapping[str, str], logs: Path) -> Path:
    """Make SuperNode ``index``'s key pair (NIST P-384, OpenSSH format, as Flower's node
    authentication asks) in ``folder``, register its public key with the running SuperLink
    (``flwr supernode register``) and return the private key's path."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = folder / f"node-{index}.pem", folder / f"node-{index}.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()))
    private.chmod(0o600)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH))
    with open(logs / f"register-{index}.log", "wb") as out:
        done = subprocess.run([_tool("flwr"), "supernode", "register", str(public), CONNECTION],
                              stdout=out, stderr=subprocess.STDOUT, env=dict(env), timeout=120)
    if done.returncode != 0:
        raise LaunchError(f"registering SuperNode {index}'s key failed; see "
                          f"{logs / f'register-{index}.log'}")
    return private


def node_config(launch: FlowerLaunch, index: int) -> str:
    """SuperNode ``index``'s ``--node-config``: its partition and where its rounds run."""
    values: dict[str, str | int] = {"partition-id": index, "num-partitions": launch.clients,
                                    "backend": launch.backend}
    if launch.artefact is not None:
        values["artefact"] = str(launch.artefact.resolve())
    if launch.eager_training:
        values["eager-training"] = "true"
    return " ".join(f"{key}={json.dumps(value)}" for key, value in values.items())


def run_config_args(run: FlowerRun) -> list[str]:
    """``flwr run --run-config`` telling the apps ``run`` (TOML values)."""
    return ["--run-config", " ".join(f"{key}={json.dumps(value)}"
                                     for key, value in run.to_run_config().items())]


def _failure_lines(log_file: Path, count: int = 6) -> str:
    """The last lines of a log that say what failed (warnings and blank lines left out)."""
    if not log_file.is_file():
        return ""
    lines = [line.strip() for line in log_file.read_text(errors="replace").splitlines()
             if line.strip() and "warn" not in line.lower()]
    return "\n".join(lines[-count:])


def launch_flower(launch: FlowerLaunch, relay: Relay | None = None) -> Path:
    """Run ``launch`` to the end; the results folder. A LaunchError says what failed. The
    final state of an earlier run of the same method and seed in the folder is replaced."""
    final_state_path(launch.flower_run()).unlink(missing_ok=True)
    with flower_processes(launch, relay) as (processes, _):
        flower_run = launch.flower_run()
        command = [_tool("flwr"), "run", str(app_folder()), CONNECTION, "--stream",
                   *run_config_args(flower_run)]
        if launch.mode is Mode.SIMULATION:
            command += ["--federation-config", f"num-supernodes={launch.clients}"]
        submit = processes.start("flwr-run", command)
        try:
            code = submit.wait(timeout=launch.timeout_s)
        except subprocess.TimeoutExpired:
            raise LaunchError(f"the Flower run did not finish within {launch.timeout_s:.0f} s; "
                              f"logs in {processes.logs}") from None
    if code != 0 or not final_state_path(flower_run).is_file():
        raise LaunchError(f"the Flower run failed (flwr run exit code {code}); logs in "
                          f"{launch.out / 'logs'}; the run's last lines:\n"
                          + _failure_lines(launch.out / "logs" / "flwr-run.log"))
    return launch.out
