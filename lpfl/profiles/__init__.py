"""Device and link profiles, and the ones that ship with lpfl (package data under ``data/``).

:mod:`lpfl.profiles.devices`: what an edge device may spend on a client and how lpfl reaches it;
:mod:`lpfl.profiles.links`: the rates and round-trip time a field run shapes a link to.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

PACKAGED = Path(str(resources.files("lpfl.profiles").joinpath("data")))
"""The folder of the shipped profiles: ``devices/*.toml`` and ``links.toml``."""
