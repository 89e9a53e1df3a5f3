"""The one record every loader produces and every partitioner and trainer consumes."""

from __future__ import annotations

from dataclasses import dataclass

UNLABELED = -1
"""The ``label`` of an :class:`Example` whose class is unknown."""


@dataclass(frozen=True)
class Example:
    """One labeled text.

    ``label`` is a class index ``0..C-1`` (for the packaged corpora: 0 negative, 1 positive), or
    :data:`UNLABELED` for a text whose label nobody knows (a device's unlabeled rows).
    ``domain`` says where the text comes from: ``"mr"``, ``"tweets"``, ``"amazon"``, ``"nyt"``,
    or the stem of the user file it was read from; the ``domain`` partition groups by it.
    Examples compare by value, so two copies of the same sentence are equal: code that must keep
    them apart (the train/test split, the partitioners) works on indices, never on values.
    """

    text: str
    label: int
    domain: str
