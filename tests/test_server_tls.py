"""wss:// with a self-signed certificate, made by the helper behind `lpfl server --make-cert`."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
import torch

from lpfl.edge_client.connection import ClientError
from lpfl.server.app import RunOutcome
from lpfl.tls import make_self_signed_cert
from lpfl.tokens import make_tokens
from tests import fake_federation as ff

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    certfile, keyfile = make_self_signed_cert(tmp_path_factory.mktemp("tls"))
    return Path(certfile), Path(keyfile)


def test_run_over_wss_with_a_trusted_self_signed_certificate(
    tmp_path: Path, cert: tuple[Path, Path],
) -> None:
    certfile, keyfile = cert

    async def scenario() -> tuple[RunOutcome, list[int]]:
        tokens = make_tokens(["c-1", "c-2"])
        server = ff.make_server(tmp_path, tokens, rounds=2, clients_per_round=2,
                                settings={"certfile": str(certfile), "keyfile": str(keyfile)})
        serving = asyncio.create_task(server.run())
        await server.started.wait()
        with pytest.raises(ClientError, match="not trusted"):
            await ff.client(server, "c-1", tokens["c-1"], scheme="wss").run()
        rounds = await asyncio.gather(*(
            ff.client(server, cid, token, scheme="wss", cafile=str(certfile)).run()
            for cid, token in tokens.items()))
        return await serving, rounds

    outcome, rounds = asyncio.run(scenario())
    assert outcome.completed and rounds == [2, 2]
    expected = ff.reference_state(["c-1", "c-2"], rounds=2, clients_per_round=2)
    for name, tensor in expected.items():
        torch.testing.assert_close(outcome.global_state[name], tensor)


def test_certificate_files_are_pem_and_the_key_is_private(cert: tuple[Path, Path]) -> None:
    certfile, keyfile = cert
    assert certfile.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert "PRIVATE KEY" in keyfile.read_text()
    assert keyfile.stat().st_mode & 0o077 == 0
