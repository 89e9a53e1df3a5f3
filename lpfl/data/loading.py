"""The single entry point from ``[data] dataset`` to a list of examples."""

from __future__ import annotations

from pathlib import Path

from lpfl.config import DataSettings
from lpfl.data.corpora import ALL_DOMAINS, CORPORA, load_corpus
from lpfl.data.examples import Example
from lpfl.data.user_files import load_user_file
from lpfl.errors import DataError


def load_dataset(settings: DataSettings, num_classes: int) -> list[Example]:
    """Load ``settings.dataset``: a packaged corpus name, or a path to a ``.csv``/``.jsonl`` file.

    A name without a file suffix is taken as a corpus name. The packaged corpora are binary
    (0 negative, 1 positive), so they need ``num_classes == 2``.
    """
    name = settings.dataset
    if Path(name).suffix:
        return load_user_file(name, num_classes, settings.label_names)
    if num_classes != 2 and (name in CORPORA or name == ALL_DOMAINS):
        raise DataError(f"dataset {name!r} has 2 classes (negative, positive) but the prompt has "
                        f"{num_classes} label words; use two prompt.label_words")
    return load_corpus(name)
