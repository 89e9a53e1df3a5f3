"""TLS: the websocket server's SSL context, and a self-signed certificate for local runs (the
websocket server's `--make-cert` and the Flower SuperLink of `lpfl flower`)."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

from lpfl.errors import ConfigError


def server_ssl_context(certfile: str | Path, keyfile: str | Path) -> ssl.SSLContext:
    """An SSL context serving ``certfile`` (PEM chain) with ``keyfile`` (PEM private key)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS certificate {certfile} / key {keyfile}: "
                          f"{exc}") from None
    return context


def make_self_signed_cert(directory: str | Path, hostname: str = "localhost") -> tuple[Path, Path]:
    """Write ``cert.pem`` and ``key.pem`` (self-signed, valid for ``hostname`` and 127.0.0.1,
    one year) into ``directory`` with the ``openssl`` command; return their paths.

    For local runs and tests only: clients must be told to trust ``cert.pem`` (``--cafile``).
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "cert.pem", folder / "key.pem"
    command = [
        "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-days", "365", "-subj", f"/CN={hostname}",
        "-addext", f"subjectAltName=DNS:{hostname},IP:127.0.0.1",
        "-keyout", str(key), "-out", str(cert),
    ]
    try:
        subprocess.run(command, check=True, capture_output=True, text=True)
    except FileNotFoundError:
        raise ConfigError("the openssl command is needed to make a certificate; install it "
                          "or bring your own certfile and keyfile") from None
    except subprocess.CalledProcessError as exc:
        raise ConfigError(f"openssl failed to make a certificate: {exc.stderr.strip()}") from None
    key.chmod(0o600)
    return cert, key
