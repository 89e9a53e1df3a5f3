"""The packaged sentiment corpora: four domains of short texts with human polarity ratings.

The files are the ground-truth sets of Hutto & Gilbert (ICWSM 2014), vendored under
``resources/`` (see ``resources/README.md``). Each line is ``id<TAB>mean rating<TAB>text``; a
positive mean rating is label 1, a negative one label 0, and texts rated exactly 0 are dropped.
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources

from lpfl.data.examples import Example
from lpfl.errors import DataError

CORPORA: tuple[str, ...] = ("mr", "tweets", "amazon", "nyt")
"""The packaged corpora, one domain each: movie reviews, tweets, Amazon reviews, NYT editorials."""

ALL_DOMAINS = "domains"
"""The name that loads all of :data:`CORPORA` concatenated, in that order."""

_FILES = {
    "mr": "movieReviewSnippets_GroundTruth.txt.gz",
    "tweets": "tweets_GroundTruth.txt.gz",
    "amazon": "amazonReviewSnippets_GroundTruth.txt.gz",
    "nyt": "nytEditorialSnippets_GroundTruth.txt.gz",
}


def load_corpus(name: str) -> list[Example]:
    """Load a packaged corpus by name (one of :data:`CORPORA`, or ``"domains"`` for all four).

    Parsing happens once per process; each call returns a fresh list, so callers may reorder or
    trim it freely.
    """
    if name not in CORPORA and name != ALL_DOMAINS:
        raise DataError(f"unknown dataset {name!r}: use one of {', '.join(CORPORA)}, "
                        f"{ALL_DOMAINS}, or a path to a .csv or .jsonl file")
    return list(_parsed(name))


@functools.cache
def _parsed(name: str) -> tuple[Example, ...]:
    if name == ALL_DOMAINS:
        return tuple(example for corpus in CORPORA for example in _parsed(corpus))
    return tuple(_parse(name, _FILES[name]))


def _parse(domain: str, filename: str) -> list[Example]:
    # The vendored files are plain UTF-8 (accented names in MR, a pound sign in tweets); decoding
    # them as latin-1 would turn "clichés" into mojibake.
    resource = importlib.resources.files("lpfl.data").joinpath("resources", filename)
    text = gzip.decompress(resource.read_bytes()).decode("utf-8")
    examples = []
    for number, line in enumerate(text.split("\n"), start=1):
        fields = line.rstrip("\r").split("\t", 2)
        if fields == [""]:
            continue
        try:
            rating = float(fields[1])
            sentence = fields[2]
        except (IndexError, ValueError):
            raise DataError(f"packaged corpus {filename}, line {number}: expected "
                            "id<TAB>rating<TAB>text; reinstall lpfl") from None
        if rating != 0.0:
            examples.append(Example(text=sentence, label=int(rating > 0.0), domain=domain))
    return examples
