"""The entry points from ``[data]`` to lists of examples: the dataset and the evaluation files."""

from __future__ import annotations

from pathlib import Path

from lpfl.config import DataSettings
from lpfl.data.corpora import ALL_DOMAINS, CORPORA, load_corpus
from lpfl.data.examples import Example
from lpfl.data.user_files import load_user_file
from lpfl.errors import ConfigError, DataError


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


def load_eval_file(settings: DataSettings, key: str, num_classes: int) -> list[Example] | None:
    """The examples of ``data.<key>`` (``test_file`` or ``validation_file``); None when unset.

    Every row needs a label (an index or a name of ``data.label_names``). Any problem with the
    file is a :class:`ConfigError` that names the key, the file and what to change.
    """
    name = str(getattr(settings, key))
    if not name:
        return None
    if not Path(name).is_file():
        raise ConfigError(f"data.{key}={name!r}: no such file; check the path (relative paths "
                          f"start from the directory lpfl runs in), or remove data.{key} to "
                          "carve the split out of data.dataset")
    try:
        return load_user_file(name, num_classes, settings.label_names)
    except DataError as exc:
        raise ConfigError(f"data.{key}: {exc}") from None
