"""Every relative link in the READMEs and in ``docs/`` points to a file that exists.

A link's ``#fragment`` into a Markdown file must name one of its headings (GitHub's anchors).
Links inside code (fenced blocks and inline spans) are not links and are left alone.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = sorted([ROOT / "README.md", ROOT / "bench" / "README.md",
                    *(ROOT / "docs").glob("*.md")])

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"(`+).+?\1", re.DOTALL)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto: ...


def without_code(text: str) -> str:
    """The Markdown text with fenced blocks and inline code spans blanked out."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def links(text: str) -> list[str]:
    """The targets of every inline link and image in ``text`` outside code."""
    return LINK.findall(without_code(text))


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to '-'."""
    text = re.sub(r"`|\*\*|__", "", heading).lower()
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading keeps its text
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(markdown: Path) -> set[str]:
    """Every anchor a Markdown file's headings define (repeats get -1, -2 ... as on GitHub)."""
    seen: dict[str, int] = {}
    result: set[str] = set()
    for heading in HEADING.findall(FENCE.sub("", markdown.read_text(encoding="utf-8"))):
        slug = anchor(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def broken_links(document: Path) -> list[str]:
    """Each relative link of ``document`` whose file or heading does not exist, with the reason."""
    problems = []
    for target in links(document.read_text(encoding="utf-8")):
        if EXTERNAL.match(target):
            continue
        path_part, _, fragment = target.partition("#")
        path = (document.parent / path_part).resolve() if path_part else document
        if not path.exists():
            problems.append(f"{target}: no file {os.path.relpath(path, ROOT)}")
        elif fragment and path.suffix == ".md" and fragment not in anchors(path):
            problems.append(f"{target}: no heading with anchor #{fragment} in {path.name}")
    return problems


def test_the_documents_are_found() -> None:
    assert ROOT / "README.md" in DOCUMENTS
    assert len(DOCUMENTS) > 1


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(document: Path) -> None:
    assert broken_links(document) == []


def test_the_parser_finds_links_and_skips_code() -> None:
    text = ("See [a](docs/a.md#part) and ![plot](b.png \"title\") or [web](https://x.org).\n"
            "`[not](c.md)`\n```\n[not](d.md)\n```\n")
    assert links(text) == ["docs/a.md#part", "b.png", "https://x.org"]


def test_anchors_follow_github() -> None:
    assert anchor("Field measurements on shaped links") == "field-measurements-on-shaped-links"
    assert anchor("Aggregator: 1,000 clients, one round") == "aggregator-1000-clients-one-round"
    assert anchor("On-device LoRA training with `ExecuTorch`") == (
        "on-device-lora-training-with-executorch")
    assert anchor("Accuracy: methods × shots") == "accuracy-methods--shots"
