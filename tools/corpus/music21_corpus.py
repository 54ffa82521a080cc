"""The ABC tunes that ship with music21: about 13,000 real folk tunes, no download needed, and
what each collection says of its tunes (name, kind, region, instruments)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from img2music.settings import Settings, get_settings
from img2music.tools.abc.check import CompiledAbc, normalise_abc
from img2music.tools.abc.scan import split_tunes
from img2music.tools.corpus.captions import tune_job
from img2music.tools.corpus.records import Collection, Job, MusicRecord, Skipped

COLLECTIONS = ("essenFolksong", "oneills1850", "ryansMammoth", "airdsAirs", "miscFolk")
ESSEN = Collection("the Essen Folksong Collection", noun="folk song", translate_headers=True)
ONEILL = Collection("O'Neill's Music of Ireland (1903)", region="Ireland")
RYAN = Collection("Ryan's Mammoth Collection (1883)")
COLE = Collection("Cole's 1000 Fiddle Tunes", instruments="fiddle")
RYAN_FIDDLE = Collection("Ryan's Mammoth Collection of Fiddle Tunes", instruments="fiddle")
# Aird's title page: "A Selection of Scotch, English, Irish and Foreign Airs adapted to the
# Fife, Violin, or German-Flute" (Glasgow, 1778 onwards).
AIRD = Collection("James Aird's Selection of Scotch, English, Irish and Foreign Airs",
                  instruments="fife, violin, flute")
MISC_FOLK = {
    "northumbrianminstrelsyopus.abc": Collection(
        "Bruce and Stokoe's Northumbrian Minstrelsy (1882)", region="Northumberland, England"
    ),
    "americanfifeopus.abc": Collection(
        "a collection of colonial and Civil War American fife music", region="America",
        instruments="fife",
    ),
}
UNKNOWN_COLLECTION = Collection("")


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


def music21_jobs(settings: Settings) -> Iterator[Job]:
    for tune in iter_corpus_tunes():
        yield partial(corpus_record, tune, settings)


def corpus_record(tune: CorpusTune, settings: Settings | None = None) -> MusicRecord | Skipped:
    """The record of one music21 corpus tune, or why it is left out."""
    return tune_job(f"music21:{tune.id}", "music21", tune.text, settings or get_settings(),
                     partial(_corpus_collection, tune))


def _corpus_collection(tune: CorpusTune, compiled: CompiledAbc) -> tuple[Collection, None]:
    """The collection's facts; Ryan's tunes name their book (Ryan's or Cole's) in B:."""
    book = ((compiled.tune.field_value("B") if compiled.tune else None) or "").lower()
    match tune.collection:
        case "essenFolksong":
            return ESSEN, None
        case "oneills1850":
            return ONEILL, None
        case "ryansMammoth" if "cole" in book:
            return COLE, None
        case "ryansMammoth" if "fiddle" in book:
            return RYAN_FIDDLE, None
        case "ryansMammoth":
            return RYAN, None
        case "airdsAirs":
            return AIRD, None
        case _:
            return MISC_FOLK.get(tune.path.name, UNKNOWN_COLLECTION), None
