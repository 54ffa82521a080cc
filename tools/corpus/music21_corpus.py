"""The ABC tunes that ship with music21: about 13,000 real folk tunes, no download needed."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from img2music.tools.abc_scan import split_tunes
from img2music.tools.check import normalise_abc

COLLECTIONS = ("essenFolksong", "oneills1850", "ryansMammoth", "airdsAirs", "miscFolk")


@dataclass(frozen=True)
class CorpusTune:
    id: str
    collection: str
    path: Path
    first_line: int
    text: str


def corpus_root() -> Path:
    from music21 import common

    return Path(common.getCorpusFilePath())


def iter_corpus_tunes(collections: tuple[str, ...] = COLLECTIONS) -> Iterator[CorpusTune]:
    """Every tune of the named collections, in a stable order; files are Latin-1."""
    root = corpus_root()
    for collection in collections:
        for path in sorted((root / collection).rglob("*.abc")):
            lines = normalise_abc(path.read_text(encoding="latin-1")).split("\n")
            for first, last in split_tunes(lines):
                text = "\n".join(lines[first:last + 1]).strip("\n") + "\n"
                yield CorpusTune(
                    id=f"{collection}/{path.relative_to(root / collection)}:{first + 1}",
                    collection=collection, path=path, first_line=first + 1, text=text,
                )
