"""How the ``lpfl`` command logs: our own loggers at INFO, other libraries' at WARNING, and
the start-up noise of a few libraries dropped unless ``-v``.

The dropped messages say nothing a user can act on: torchao's failed loads of CUDA kernels and
its Triton notice, torch's deprecation of ``register_constant`` on the Enums torchao registers,
the ONNX exporter's skipped torchvision ops and a pytree ``LeafSpec`` deprecation. Third-party
INFO (the ONNX quantizer logs every node) stays below the WARNING threshold.
"""

from __future__ import annotations

import logging
import warnings

QUIET = -1
NORMAL = 0
VERBOSE = 1

FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"

SILENCED = ("torchao",)
"""Loggers shown only with ``-v``: every message they write at start-up is noise."""

DROPPED = {
    "torch.utils._pytree": "register_constant()",
    "torch.onnx._internal.exporter._registration": "torchvision is not installed",
}
"""Logger -> a text whose messages from that logger are dropped unless ``-v``."""

DROPPED_WARNINGS = (r"`isinstance\(treespec, LeafSpec\)` is deprecated",)
"""Python warnings (regular expressions of their messages) dropped unless ``-v``."""


class _Drop(logging.Filter):
    """Refuses records whose message contains ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def configure(verbosity: int = NORMAL) -> None:
    """Set up logging for one ``lpfl`` process: ``lpfl.*`` at INFO (DEBUG with ``VERBOSE``,
    WARNING with ``QUIET``), everything else at WARNING (INFO with ``VERBOSE``), the known
    start-up noise dropped unless ``VERBOSE``. Calling it again replaces the earlier levels and
    filters; a root handler that is already there (a test runner's) is kept."""
    own = {QUIET: logging.WARNING, NORMAL: logging.INFO}.get(verbosity, logging.DEBUG)
    logging.basicConfig(format=FORMAT)
    logging.getLogger().setLevel(logging.INFO if verbosity >= VERBOSE else logging.WARNING)
    logging.getLogger("lpfl").setLevel(own)
    quiet = verbosity < VERBOSE
    for name in SILENCED:
        logging.getLogger(name).setLevel(logging.ERROR if quiet else logging.NOTSET)
    for name, text in DROPPED.items():
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, _Drop)]:
            logger.removeFilter(old)
        if quiet:
            logger.addFilter(_Drop(text))
    for pattern in DROPPED_WARNINGS:
        warnings.filterwarnings("ignore" if quiet else "default", message=pattern)
