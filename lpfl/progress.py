"""Progress bars where a user waits: scoring many texts, export stages.

A bar is drawn on stderr only when it is a terminal and lpfl logs at INFO or below (so ``-q``,
a redirected log or a test run see none). Bars are tqdm's, cleared when done.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def shown() -> bool:
    """Whether bars are drawn: stderr is a terminal and lpfl's INFO messages are on."""
    return sys.stderr.isatty() and logging.getLogger("lpfl").isEnabledFor(logging.INFO)


def bar(items: Iterable[T], total: int, description: str, unit: str = "batch") -> Iterator[T]:
    """``items`` with a bar of ``total`` steps (none when :func:`shown` is false)."""
    yield from tqdm(items, total=total, desc=description, unit=unit, leave=False,
                    disable=not shown(), file=sys.stderr)


@contextmanager
def stages(description: str, names: Sequence[str]) -> Iterator[Callable[[str], None]]:
    """A bar over named stages: call the yielded function with each stage's name as it
    starts; the bar shows which one runs."""
    with tqdm(total=len(names), desc=description, unit="stage", leave=False,
              disable=not shown(), file=sys.stderr) as progress:
        started: list[str] = []

        def start(name: str) -> None:
            if started:
                progress.update(1)
            started.append(name)
            progress.set_postfix_str(name)

        yield start
        if started:
            progress.update(1)
