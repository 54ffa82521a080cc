"""Records for the retrieval index: real tunes, each with valid ABC, an English caption and flat
metadata.

Three sources feed the index. music21's folk collections ship with the package, so retrieval
works with no download; MidiCaps (the paper's database) brings its own captions; any folder of
ABC files can be added. A tune without a caption gets one written from its headers and its MIDI,
in the style of MidiCaps captions (genre, key, meter, tempo, then shape and source), because the
index compares captions with images and image descriptions in one CLIP space. Captions state
only what the tune's headers, its collection or its notes say; German Essen headers are
translated with small tables (below), and whatever the tables do not know is left out.

The tables are module constants, not prompt files: they translate the corpora's own header
vocabulary, and changing a word means rebuilding the index, not retrying a prompt.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import logging
import re
import string
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import Any, Literal, NamedTuple

import mido
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from img2music.settings import Settings, get_settings
from img2music.tools.abc_scan import KEY_TONIC, is_music_line, split_tunes
from img2music.tools.check import (
    CompiledAbc,
    compile_abc,
    decode_abc,
    normalise_abc,
    select_backend,
)
from img2music.tools.convert import DRUM_CHANNEL, midi_to_abc
from img2music.tools.music21_corpus import CorpusTune, iter_corpus_tunes
from img2music.tools.programs import ProgramMissing

logger = logging.getLogger(__name__)

SourceName = Literal["music21", "midicaps", "abc-dir"]
MetadataValue = str | int | float | bool

# --- Tune types and tempo -------------------------------------------------------------------

# English tune types as R:, G:, or a title's last word or " -- Reel" suffix give them.
TUNE_TYPES = {
    "reel": "reel", "jig": "jig", "double jig": "double jig", "single jig": "single jig",
    "slip jig": "slip jig", "slipjig": "slip jig", "hop jig": "hop jig", "slide": "slide",
    "hornpipe": "hornpipe", "strathspey": "strathspey", "strathsy": "strathspey",
    "clog": "clog", "lancashire clog": "clog", "highland fling": "highland fling",
    "fling": "highland fling", "set dance": "set dance", "long dance": "long dance",
    "march": "march", "slow march": "slow march", "quick step": "quickstep",
    "quickstep": "quickstep", "waltz": "waltz", "polka": "polka", "mazurka": "mazurka",
    "schottische": "schottische", "air": "air", "slow air": "slow air", "lament": "lament",
    "lamentation": "lament", "song": "song", "minuet": "minuet", "gavotte": "gavotte",
    "country dance": "country dance", "contra dance": "contra dance", "walkaround": "walkaround",
    "walk around": "walkaround", "essence": "essence", "breakdown": "breakdown",
    "planxty": "planxty", "rant": "rant", "lullaby": "lullaby", "barn dance": "barn dance",
    "dance": "dance", "cotillion": "cotillion", "quadrille": "quadrille", "galop": "galop",
}
# How a tune type is usually played, for tunes whose source gives no tempo.
TYPICAL_PACE = {
    "reel": "usually played at a brisk pace",
    "jig": "usually played at a lively pace",
    "double jig": "usually played at a lively pace",
    "single jig": "usually played at a lively pace",
    "slide": "usually played at a lively pace",
    "slip jig": "usually played at a lilting pace",
    "hop jig": "usually played at a lilting pace",
    "hornpipe": "usually played at a steady, swinging pace",
    "clog": "usually played at a steady pace",
    "strathspey": "usually played at a stately pace",
    "highland fling": "usually played at a steady pace",
    "march": "usually played at a marching pace",
    "quickstep": "usually played at a quick marching pace",
    "slow march": "usually played at a slow marching pace",
    "waltz": "usually played at a waltz pace",
    "polka": "usually played at a quick pace",
    "air": "usually played slowly and freely",
    "slow air": "usually played slowly and freely",
    "lament": "usually played slowly",
    "lullaby": "usually sung gently and slowly",
}
# Expression marks (O'Neill's N:, Aird's and others' Q: text) and the mood each states.
EXPRESSION_MOODS = {
    "slow": "", "very slow": "", "slowly": "", "moderate": "", "moderato": "", "andante": "",
    "allegro": "", "briskly": "brisk", "lively": "lively", "spirited": "spirited",
    "with spirit": "spirited", "animated": "animated", "with animation": "animated",
    "tenderly": "tender", "with feeling": "expressive", "with expression": "expressive",
    "gaily": "cheerful", "cheerful": "cheerful", "cheerfully": "cheerful",
    "gheerfully": "cheerful", "playfully": "playful", "playful": "playful",
    "plaintively": "plaintive", "plaintive": "plaintive", "boldly": "bold",
    "gracefully": "graceful", "graceful": "graceful", "mournful": "mournful",
    "mournfully": "mournful", "airily": "airy", "distinctly": "", "smoothly": "smooth",
}
# A Q: pulse (beats a minute, as written) in words.
PACE_WORDS = ((66, "slow"), (95, "moderate"), (135, "lively"))
PACE_FAST = "fast"

# --- German (and pinyin) headers of the Essen collection ------------------------------------

# Genre terms of Essen's R: field, normalised (lower case, umlauts spelled out, no hyphens or
# spaces, plural "-lieder" as "-lied"); the frequent ones, enough for most of the 8,514 tunes.
GERMAN_GENRES = {
    "ballade": "ballad", "romanze": "romance", "lied": "song", "liebeslied": "love song",
    "erzaehlendesvolkslied": "narrative folk song", "erzaehlendeslied": "narrative song",
    "erzaehlendelied": "narrative song", "erzaehlung": "narrative song",
    "kinderlied": "children's song", "staendelied": "occupational song",
    "berufslied": "occupational song", "soldatenlied": "soldiers' song",
    "religioeseslied": "sacred song", "religioeselied": "sacred song", "religioes": "sacred song",
    "geistlich": "sacred song", "geistliche": "sacred song", "geistliches": "sacred song",
    "geistlicheslied": "sacred song", "geistlichelied": "sacred song",
    "trinklied": "drinking song", "zechlied": "drinking song", "kriegslied": "war song",
    "scherzlied": "humorous song", "scherz": "humorous song", "reigen": "round dance",
    "reigentanz": "round dance", "tanzlied": "dance song", "tanz": "dance",
    "abschiedslied": "farewell song", "jaegerlied": "hunting song", "jagdlied": "hunting song",
    "sagenlied": "legend song", "legendenlied": "legend song", "legende": "legend",
    "jugendlied": "youth song", "morallied": "moral song", "ehestandslied": "marriage song",
    "hochzeitslied": "wedding song", "brautlied": "bridal song", "studentenlied": "student song",
    "geselligkeitslied": "convivial song", "tanzspiel": "dance game",
    "handwerkerlied": "craftsmen's song", "gesellenlied": "journeymen's song",
    "wanderlied": "wandering song", "historischeslied": "historical song",
    "historisches": "historical song", "historische": "historical song",
    "vaterlandslied": "patriotic song", "national": "patriotic song",
    "patriotisch": "patriotic song", "heimatlied": "homeland song",
    "lyrischeslied": "lyrical song", "lustigeromanze": "comic romance", "wiegenlied": "lullaby",
    "schlaflied": "lullaby", "kinderspiel": "children's game", "spiellied": "game song",
    "brauchtumslied": "custom song", "brauchtum": "custom song", "spottlied": "mocking song",
    "jahreszeitenlied": "seasonal song", "naturlied": "nature song", "bauernlied": "farmers' song",
    "maerchenlied": "fairy-tale song", "zauberlied": "magic song", "schalkslied": "rogue's song",
    "schalklied": "rogue's song", "schelmenlied": "rogue's song", "trostlied": "consolation song",
    "kiltlied": "night-courting song", "hirtenlied": "shepherds' song",
    "schaeferlied": "shepherds' song", "schwank": "comic tale", "marienlied": "Marian song",
    "siegeslied": "victory song", "festlied": "festive song", "heldenlied": "heroic song",
    "seemannslied": "sailors' song", "schifferlied": "boatmen's song",
    "bergmannslied": "miners' song", "weihnachtslied": "Christmas song",
    "weihnachten": "Christmas song", "heiligenlied": "saints' song", "loblied": "song of praise",
    "danklied": "song of thanks", "arbeitslied": "work song", "wallfahrtslied": "pilgrimage song",
    "tierlied": "animal song", "jodler": "yodel", "alpenlied": "alpine song", "choral": "chorale",
    "tagelied": "dawn song", "klagelied": "lament", "liebesklage": "love lament",
    "trauerlied": "mourning song", "walzer": "waltz", "ritterlied": "knights' song",
    "reiterlied": "cavalry song", "raetsellied": "riddle song", "luegenlied": "tall-tale song",
    "zeitungslied": "broadside song", "erbauungslied": "devotional song",
    # Chinese genres of the Han collections, in pinyin.
    "xiaodiao": "xiaodiao (ditty)", "shange": "shan'ge (mountain song)",
    "haozi": "haozi (work song)", "xintianyou": "xintianyou (mountain song)",
    "yangge": "yangge (dance song)", "erge": "children's song", "qingge": "love song",
    "xinminge": "new folk song", "geminglishiminge": "revolutionary folk song",
}
# Headings that a more specific genre beside them makes redundant.
GENERIC_GENRES = frozenset({"song", "occupational song"})
# Themes of Essen's R: field (same normalisation), as the caption lists them.
GERMAN_THEMES = {
    "liebe": "love", "tod": "death", "klage": "lament", "mord": "murder", "leid": "sorrow",
    "sage": "legend", "verfuehrung": "seduction", "standesunterschied": "class difference",
    "selbstmord": "suicide", "abschied": "farewell", "schwangerschaft": "pregnancy",
    "betrug": "deception", "brautwerbung": "courtship", "werbung": "courtship",
    "vergeblichewerbung": "vain courtship", "liebeslust": "love's delight", "strafe": "punishment",
    "todesahnung": "foreboding of death", "hinrichtung": "execution", "hochzeit": "wedding",
    "fruehling": "spring", "sommer": "summer", "herbst": "autumn", "winter": "winter",
    "trennung": "parting", "habgier": "greed", "reue": "remorse", "entfuehrung": "abduction",
    "ehe": "marriage", "natur": "nature", "krieg": "war", "abend": "evening", "morgen": "morning",
    "nacht": "night", "rache": "revenge", "spott": "mockery", "treue": "faithfulness",
    "untreue": "infidelity", "freude": "joy", "kindsmord": "infanticide", "flucht": "flight",
    "geist": "ghosts", "gefangenschaft": "captivity", "rueckkehr": "homecoming",
    "heimkehr": "homecoming", "familiengeschichte": "family history", "wanderschaft": "wandering",
    "rettung": "rescue", "verlasseneliebe": "forsaken love", "verboteneliebe": "forbidden love",
    "betrogeneliebe": "betrayed love", "vergeltung": "retribution", "sehnsucht": "longing",
    "trauer": "grief", "vergaenglichkeit": "transience", "heimweh": "homesickness",
    "eifersucht": "jealousy", "freundschaft": "friendship", "jagd": "hunting",
    "enttaeuschung": "disappointment", "unfall": "accident", "neujahr": "New Year",
    "jahreszeiten": "the seasons", "arbeit": "work", "grab": "the grave",
}
# Compound heads that German elides in lists ("Kinder -, Wiegen - Lied").
ELIDED_HEADS = ("lied", "spiel", "tanz", "geschichte")
# Essen's O: names places from the continent down; continents are dropped.
CONTINENTS = frozenset({
    "europa", "mitteleuropa", "osteuropa", "suedosteuropa", "nordeuropa", "westeuropa",
    "suedeuropa", "asien", "ostasien",
})
COUNTRIES = {
    "deutschland": "Germany", "luxemburg": "Luxembourg", "frankreich": "France",
    "polen": "Poland", "jugoslawien": "Yugoslavia", "schweiz": "Switzerland",
    "niederlande": "the Netherlands", "oesterreich": "Austria", "irland": "Ireland",
    "udssr": "the USSR", "ungarn": "Hungary", "tschechoslowakei": "Czechoslovakia",
    "rumaenien": "Romania", "russland": "Russia", "italien": "Italy", "schweden": "Sweden",
    "china": "China", "ukraine": "Ukraine", "daenemark": "Denmark", "belgien": "Belgium",
    "england": "England", "schottland": "Scotland", "norwegen": "Norway", "spanien": "Spain",
    "scotch": "Scotland", "scottish": "Scotland", "irish": "Ireland", "ireland": "Ireland",
    "scotland": "Scotland", "germany": "Germany", "france": "France",
    "highland": "the Scottish Highlands", "westindia": "the West Indies",
}
PLACES = {
    "lothringen": "Lorraine", "hessen": "Hesse", "schlesien": "Silesia",
    "rheinland": "the Rhineland", "niederrhein": "the Lower Rhine", "westfalen": "Westphalia",
    "elsass": "Alsace", "thueringen": "Thuringia", "sachsen": "Saxony", "franken": "Franconia",
    "schwaben": "Swabia", "bayern": "Bavaria", "pommern": "Pomerania", "tirol": "Tyrol",
    "siebenbuergen": "Transylvania", "boehmen": "Bohemia", "steiermark": "Styria",
    "koeln": "Cologne", "wuerttemberg": "Württemberg", "ostpreussen": "East Prussia",
    "preussen": "Prussia", "galizien": "Galicia", "norddeutschland": "northern Germany",
    "sueddeutschland": "southern Germany", "rhein": "the Rhine", "rheinpfalz": "the Palatinate",
    "rheinprovinz": "the Rhine Province", "niedersachsen": "Lower Saxony",
    "hannover": "Hanover", "oberfranken": "Upper Franconia", "flaemisch": "Flanders",
    "nordwesten": "the north-west", "flamen": "Flanders", "shanbei": "northern Shaanxi",
    "schleswigholstein": "Schleswig-Holstein", "nordrheinwestfalen": "North Rhine-Westphalia",
}
# Umlauts of a DOS code page that some Essen files carry as control characters.
DOS_UMLAUTS = str.maketrans({"\x81": "ü", "\x84": "ä", "\x94": "ö", "\x8e": "Ä", "\x99": "Ö",
                             "\x9a": "Ü"})

# --- The music21 collections ----------------------------------------------------------------


@dataclass(frozen=True)
class Collection:
    """What a whole collection says of its tunes: name, default kind, region, instruments."""

    name: str
    noun: str = "tune"
    region: str = ""
    instruments: str = ""
    translate_headers: bool = False


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

# --- Captions: the words for numbers ---------------------------------------------------------

MODES = {
    "": "major", "m": "minor", "min": "minor", "maj": "major", "ion": "major", "aeo": "minor",
    "mix": "mixolydian", "dor": "dorian", "phr": "phrygian", "lyd": "lydian", "loc": "locrian",
}
KEY_SUFFIXES = ("clef", "treble", "bass", "alto", "tenor", "middle", "transpose", "octave")
METER_KINDS = {
    1: "", 2: "simple duple", 3: "simple triple", 4: "simple quadruple", 5: "irregular",
    6: "compound duple", 7: "irregular", 9: "compound triple", 11: "irregular",
    12: "compound quadruple",
}
INTERVALS = (
    "a unison", "a semitone", "a whole tone", "a minor third", "a major third", "a fourth",
    "a tritone", "a fifth", "a minor sixth", "a major sixth", "a minor seventh",
    "a major seventh",
)
# Beyond an octave, the interval above the octave(s) in plain words.
INTERVALS_ABOVE_OCTAVE = (
    "", "a semitone", "a second", "a third", "a third", "a fourth", "a half", "a fifth",
    "a sixth", "a sixth", "a seventh", "a seventh",
)
OCTAVES = ("", "an octave", "two octaves", "three octaves", "four octaves")
# Notes per quarter-note beat (per voice) and the word for that density.
DENSITY_WORDS = ((1.0, "sparse"), (1.6, "measured"), (2.6, "flowing"))
DENSITY_BUSY = "busy"
# The most frequent gap between note onsets, in quarter notes, and its name.
NOTE_VALUES = {
    Fraction(1, 4): "sixteenth notes", Fraction(1, 3): "triplet eighth notes",
    Fraction(1, 2): "eighth notes", Fraction(3, 4): "dotted eighth notes",
    Fraction(1): "quarter notes", Fraction(3, 2): "dotted quarter notes",
    Fraction(2): "half notes", Fraction(3): "dotted half notes", Fraction(4): "whole notes",
}
MAIN_VALUE_SHARE = 0.4
# Lengths (in quarter notes) of long-short pairs that stand for two equal written notes.
SWUNG_PAIRS = frozenset({Fraction(1, 2), Fraction(1), Fraction(2)})
NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight")

# --- Files ------------------------------------------------------------------------------------

MIDICAPS_CAPTIONS = "train.json"
SIDECAR_NAMES = ("captions.json", "captions.jsonl")
SHAPE_PEEK_CHARS = 65_536
# Threads per ingest: enough to keep two cores busy while abc2midi and midi2abc start.
MAX_WORKERS = 4
LOOKAHEAD_PER_WORKER = 4
TUNE_CAPTION = re.compile(r"^(?:%\s*|N:\s*)caption\b[\s:=-]*(?P<text>.+)$", re.IGNORECASE)
QUOTED = re.compile(r'"([^"]*)"')
TEMPO_VALUE = re.compile(r"^(?:(?P<beats>(?:\d+/[1-9]\d*\s*)+)=\s*)?(?P<pulse>\d+)$")
METER_FIGURES = re.compile(r"^(?P<num>\d+(?:\+\d+)*)/(?P<den>\d+)$")
TRAILING_ARTICLES = frozenset({"The", "A", "An"})
TITLE_TYPE_SPLIT = re.compile(r"\s*(?:--|[.,;:()])\s*")


class MusicRecord(BaseModel):
    """One tune as the index stores it: valid ABC, the caption CLIP embeds, flat metadata."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(description="Stable and unique: source, file and place in the file.")
    abc: str = Field(description="One valid tune, normalised; passes parse-check.")
    caption: str = Field(description="English, MidiCaps style; what CLIP embeds.")
    source: SourceName
    title: str = ""
    key: str = Field(default="", description='e.g. "G major", "A minor", "D dorian".')
    meter: str = Field(default="", description='e.g. "6/8".')
    tempo: int | None = Field(default=None, description="Quarter-note bpm when known.")
    genre: str = ""
    region: str = ""
    instruments: str = Field(default="", description="Comma-separated names.")
    mood: str = ""
    bars: int = 0

    def metadata(self) -> dict[str, MetadataValue]:
        """Everything but id and caption, flat and without None (Chroma refuses None)."""
        values = self.model_dump(exclude={"id", "caption"})
        values["tempo"] = self.tempo or 0
        return values


class Skipped(NamedTuple):
    """A tune or file left out, with the one-line reason."""

    id: str
    reason: str


# Work for one record: a skip known without work, or the call that makes a record.
Job = Skipped | Callable[[], MusicRecord | Skipped]


def iter_records(
    source: SourceName,
    *,
    path: Path | None = None,
    limit: int | None = None,
    settings: Settings | None = None,
) -> Iterator[MusicRecord | Skipped]:
    """Records of one source in a stable order, with a `Skipped` for each tune left out.

    Wrong arguments, a missing folder or captions file and a malformed captions sidecar raise
    at once; a bad tune, file or captions line never stops the run. `limit` counts records,
    not skips.
    """
    settings = settings or get_settings()
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be 0 or more, not {limit}")
    jobs: Iterator[Job]
    if source == "music21":
        if path is not None:
            raise ValueError("the music21 source ships with music21 and takes no path")
        jobs = _music21_jobs(settings)
    elif path is None or not path.is_dir():
        raise NotADirectoryError(f"the {source} source needs a folder; {path} is not one")
    elif source == "midicaps":
        jobs = _midicaps_jobs(path, find_captions_files(path), settings)
    elif source == "abc-dir":
        jobs = _abc_dir_jobs(path, load_sidecar_captions(path), settings)
    else:
        raise ValueError(f"unknown source {source!r}; use music21, midicaps or abc-dir")
    workers = 1 if select_backend(settings) == "music21" else MAX_WORKERS
    return _counted(jobs, workers, source, limit)


def _counted(
    jobs: Iterator[Job], workers: int, source: str, limit: int | None
) -> Iterator[MusicRecord | Skipped]:
    kept = skipped = 0
    if limit == 0:
        return
    for item in _run_in_order(jobs, workers):
        yield item
        if isinstance(item, Skipped):
            skipped += 1
            logger.debug("skipped %s: %s", item.id, item.reason)
            continue
        kept += 1
        if limit is not None and kept >= limit:
            break
    logger.info("%s: %d records, %d skipped", source, kept, skipped)


def _run_in_order(jobs: Iterator[Job], workers: int) -> Iterator[MusicRecord | Skipped]:
    """Run jobs in threads, results in input order: a tune's time goes mostly to waiting on
    abc2midi or midi2abc, so a few threads overlap it. Only a bounded run of jobs is ahead."""
    if workers <= 1:
        for job in jobs:
            yield job if isinstance(job, Skipped) else job()
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="img2music-sources")
    pending: deque[Future[MusicRecord | Skipped]] = deque()
    try:
        for job in jobs:
            pending.append(_submit(pool, job))
            if len(pending) >= workers * LOOKAHEAD_PER_WORKER:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _submit(pool: ThreadPoolExecutor, job: Job) -> Future[MusicRecord | Skipped]:
    if isinstance(job, Skipped):
        done: Future[MusicRecord | Skipped] = Future()
        done.set_result(job)
        return done
    return pool.submit(job)


def _tune_job(
    record_id: str,
    source: SourceName,
    text: str,
    settings: Settings,
    describe: Callable[[CompiledAbc], tuple[Collection, str | None]],
) -> MusicRecord | Skipped:
    """Check one tune and, when valid, describe it; `describe` gives its collection and any
    caption given with it."""
    compiled = compile_abc(normalise_tune(text), settings=settings)
    if not compiled.check.ok or compiled.tune is None or compiled.midi is None:
        return Skipped(record_id, _first_error(compiled))
    try:
        collection, caption = describe(compiled)
        return tune_record(record_id, source, compiled, collection, caption)
    except Exception as error:  # a header nobody foresaw must not stop an ingest
        logger.exception("could not describe %s", record_id)
        return Skipped(record_id, f"could not describe the tune: {_one_line(str(error))}")


# --- music21 ----------------------------------------------------------------------------------


def _music21_jobs(settings: Settings) -> Iterator[Job]:
    for tune in iter_corpus_tunes():
        yield partial(corpus_record, tune, settings)


def corpus_record(tune: CorpusTune, settings: Settings | None = None) -> MusicRecord | Skipped:
    """The record of one music21 corpus tune, or why it is left out."""
    return _tune_job(f"music21:{tune.id}", "music21", tune.text, settings or get_settings(),
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


# --- One tune: facts, caption, record ---------------------------------------------------------


@dataclass(frozen=True)
class TuneFacts:
    """What a caption may say about a tune: read from its headers, collection and MIDI."""

    record_id: str
    title: str = ""
    other_title: str = ""
    key: str = ""
    meter: str = ""
    meter_phrase: str = ""
    tempo: int | None = None
    pace: str = ""
    marking: str = ""
    moods: tuple[str, ...] = ()
    genres: tuple[str, ...] = ()
    themes: tuple[str, ...] = ()
    region: str = ""
    collection: str = ""
    composer: str = ""
    instruments: str = ""
    noun: str = "tune"
    bars: int = 0
    voices: int = 1
    range_semitones: int | None = None
    density: str = ""
    main_value: str = ""


def tune_record(
    record_id: str,
    source: SourceName,
    compiled: CompiledAbc,
    collection: Collection,
    caption: str | None = None,
) -> MusicRecord:
    """A record for a valid tune; the caption is written from its facts unless one is given."""
    facts = tune_facts(record_id, compiled, collection)
    return MusicRecord(
        id=record_id, abc=compiled.abc, caption=caption or write_caption(facts), source=source,
        title=facts.title, key=facts.key, meter=facts.meter, tempo=facts.tempo,
        genre=", ".join(facts.genres), region=facts.region, instruments=facts.instruments,
        mood=", ".join(facts.moods), bars=facts.bars,
    )


def tune_facts(record_id: str, compiled: CompiledAbc, collection: Collection) -> TuneFacts:
    """Facts of a valid tune from its header fields, its collection, the check and its MIDI."""
    tune, check = compiled.tune, compiled.check
    assert tune is not None and compiled.midi is not None, "only valid tunes are described"
    fields: dict[str, list[str]] = {}
    for header in tune.header:
        value = _clean_text(header.value.split("%", 1)[0])
        if value:
            fields.setdefault(header.letter, []).append(value)
    titles = [_split_title_type(value) for value in fields.get("T", [])]
    title, title_type = titles[0] if titles else ("", "")
    genres, themes = _genres_and_themes(fields, title_type, collection)
    tempo, pulse, q_marks = _read_tempo(fields.get("Q", []))
    marks = q_marks + [mark for value in fields.get("N", []) for mark in _expression_marks(value)]
    region, composer = _region_and_composer(fields, collection)
    semitones, main_value = midi_summary(compiled.midi)
    voices = max(check.voices, 1)
    beats = check.duration_beats
    meter_value = (fields.get("M") or ["none"])[0]
    pace = ""
    if tempo is not None:
        pace = f"at {tempo} bpm" if marks else f"at a {_pace_word(pulse)} {tempo} bpm"
    elif not marks and genres:
        pace = TYPICAL_PACE.get(genres[0], "")
    return TuneFacts(
        record_id=record_id,
        title=title,
        other_title=next((t for t, _ in titles[1:] if t and t != title), ""),
        key=key_name((fields.get("K") or [""])[0]),
        meter=meter_figures(meter_value),
        meter_phrase=meter_phrase(meter_value),
        tempo=tempo,
        pace=pace,
        marking=marks[0] if marks else "",
        moods=tuple(dict.fromkeys(m for mark in marks if (m := _mark_mood(mark)))),
        genres=genres,
        themes=themes,
        region=region,
        collection=collection.name,
        composer=composer,
        instruments=collection.instruments,
        noun=genres[0] if genres else collection.noun,
        bars=check.bars,
        voices=voices,
        range_semitones=semitones,
        density=density_word(check.notes / voices / beats) if beats else "",
        main_value=main_value,
    )


def write_caption(facts: TuneFacts) -> str:
    """A MidiCaps-style caption: kind, key, meter and tempo first (CLIP reads the start best),
    then length, range and motion, then themes, marking and source. The wording varies with a
    hash of the id, so the index does not hold 13,000 copies of one sentence shape."""
    sentences = [_opening(facts), _shape(facts), _also_and_themes(facts), _marking(facts),
                 _source(facts)]
    return " ".join(sentence for sentence in sentences if sentence)


def _opening(facts: TuneFacts) -> str:
    noun = facts.noun
    if facts.instruments:
        noun += " for " + _and_list(facts.instruments.split(", "), "or")
    if facts.region:
        noun += f" from {facts.region}"
    setting = _and_list([part for part in (facts.key, facts.meter_phrase) if part], "and")
    pace = f", {facts.pace}" if facts.pace else ""
    choice = _choose(facts.record_id, "opening", 3) if setting else 0
    if choice == 1:
        return f"This {noun}{',' if ',' in facts.region else ''} is in {setting}{pace}."
    if choice == 2:
        return f"{_upper_first(_with_article(noun))}, set in {setting}{pace}."
    where = (", in " if "," in facts.region else " in ") + setting if setting else ""
    return f"{_upper_first(_with_article(noun))}{where}{pace}."


def _shape(facts: TuneFacts) -> str:
    if not facts.bars:
        return ""
    length = f"{facts.bars} bar{'s' if facts.bars != 1 else ''}"
    if facts.voices > 1:
        length += f" in {_number_word(facts.voices)} parts"
    subject = "the melody" if facts.voices == 1 else "the music"
    motion = f"is {facts.density}" if facts.density else "moves"
    if facts.main_value:
        motion += f", mostly in {facts.main_value}"
    clauses = [motion]
    if facts.range_semitones is not None:
        clauses.append(f"spans {range_words(facts.range_semitones)}")
    joined = (", and " if "," in clauses[0] else " and ").join(clauses)
    choice = _choose(facts.record_id, "shape", 3)
    if choice == 1:
        return f"Over {length}, {subject} {joined}."
    if choice == 2:
        return f"{_upper_first(subject)} {joined}, over {length}."
    return f"It runs {length}; {subject} {joined}."


def _also_and_themes(facts: TuneFacts) -> str:
    parts = []
    if len(facts.genres) > 1:
        also = [_with_article(genre) for genre in facts.genres[1:4]]
        parts.append(f"also classed as {_and_list(also, 'and')}")
    if facts.themes:
        themes = _and_list(list(facts.themes[:3]), "and")
        theme_is = "theme is" if len(facts.themes) == 1 else "themes are"
        parts.append(f"its {theme_is} {themes}" if _choose(facts.record_id, "themes", 2)
                     else f"it tells of {themes}")
    return _upper_first("; ".join(parts)) + "." if parts else ""


def _marking(facts: TuneFacts) -> str:
    if not facts.marking:
        return ""
    return f'Marked "{facts.marking}".'


def _source(facts: TuneFacts) -> str:
    titled = f"titled '{facts.title}'" if facts.title else ""
    if titled and facts.other_title:
        titled += f" (also known as '{facts.other_title}')"
    credit = f", credited to {facts.composer}" if facts.composer else ""
    if facts.collection and titled:
        if _choose(facts.record_id, "source", 2):
            return f"{_upper_first(titled)}, from {facts.collection}{credit}."
        return f"From {facts.collection}, {titled}{credit}."
    if facts.collection:
        return f"From {facts.collection}{credit}."
    if titled:
        return f"{_upper_first(titled)}{credit}."
    return f"Credited to {facts.composer}." if facts.composer else ""


def _choose(record_id: str, slot: str, options: int) -> int:
    """A deterministic choice among wordings: the same tune always gets the same caption."""
    return zlib.crc32(f"{slot}:{record_id}".encode()) % options


def _with_article(noun: str) -> str:
    return ("an " if noun[:1].lower() in "aeio" else "a ") + noun


def _upper_first(text: str) -> str:
    return text[:1].upper() + text[1:]


def _and_list(items: list[str], conjunction: str) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + f" {conjunction} " + items[-1]


def _number_word(number: int) -> str:
    return NUMBER_WORDS[number] if number < len(NUMBER_WORDS) else str(number)


# --- Reading header values ------------------------------------------------------------------


def key_name(value: str) -> str:
    """A K: value spelled out: "Am" → "A minor", "Gmix" → "G mixolydian"; "" when unclear."""
    match = KEY_TONIC.match(value.split("%", 1)[0].strip())
    if match is None:
        return ""
    tonic = match["tonic"][0].upper() + match["tonic"][1:]
    word, rest = match["word"].lower(), match["rest"].strip()
    if word in KEY_SUFFIXES or rest.startswith("="):
        word = ""
    mode = MODES.get(word[:3] if len(word) > 1 else word)
    return f"{tonic} {mode}" if mode else ""


def meter_figures(value: str) -> str:
    """An M: value as figures, "C" as "4/4" and "C|" as "2/2"; "" for free meter."""
    text = value.split("%", 1)[0].strip()
    if text == "C":
        return "4/4"
    if text == "C|":
        return "2/2"
    return text if METER_FIGURES.match(text) else ""


def meter_phrase(value: str) -> str:
    """The meter in figures and words, short: "6/8 time (compound duple)"."""
    text = value.split("%", 1)[0].strip()
    if text == "C":
        return "common time (4/4)"
    if text == "C|":
        return "cut time (2/2)"
    figures = METER_FIGURES.match(text)
    if figures is None:
        return "free time" if text.lower() in {"none", ""} or text.upper().startswith("FREI") \
            else ""
    if text == "4/4":
        return "4/4 time (common time)"
    if text == "2/2":
        return "2/2 time (cut time)"
    beats = sum(int(part) for part in figures["num"].split("+"))
    kind = "irregular" if "+" in figures["num"] else METER_KINDS.get(beats, "")
    return f"{text} time ({kind})" if kind else f"{text} time"


def quarter_note_bpm(value: str) -> int | None:
    """A Q: value in quarter notes a minute: "3/8=60" → 90, "1/4=120" → 120, "120" → 120."""
    return _parse_tempo(value)[0]


def _parse_tempo(value: str) -> tuple[int | None, int]:
    """Quarter-note bpm and the pulse as written (beats a minute) of one Q: value."""
    text = QUOTED.sub(" ", value.removeprefix("Q:")).strip()
    match = TEMPO_VALUE.match(re.sub(r"\s*=\s*", "=", text))
    if match is None:
        return None, 0
    pulse = int(match["pulse"])
    if not match["beats"]:
        return pulse or None, pulse
    beat = sum((Fraction(part) for part in match["beats"].split()), Fraction(0))
    bpm = round(pulse * beat * 4)
    return bpm or None, pulse


def _read_tempo(values: list[str]) -> tuple[int | None, int, list[str]]:
    """The first Q: field: bpm, pulse and its quoted words ("Slow")."""
    if not values:
        return None, 0, []
    bpm, pulse = _parse_tempo(values[0])
    marks = [_clean_text(mark) for mark in QUOTED.findall(values[0]) if _clean_text(mark)]
    return bpm, pulse, marks


def _pace_word(pulse: int) -> str:
    return next((word for limit, word in PACE_WORDS if pulse <= limit), PACE_FAST)


def _expression_marks(value: str) -> list[str]:
    """Expression marks in an N: field ("Slow", "With spirit"), not other notes."""
    candidates = QUOTED.findall(value) or [value]
    return [mark for mark in (_clean_text(c).rstrip(".") for c in candidates)
            if mark and _mark_parts(mark) is not None]


def _mark_parts(mark: str) -> list[str] | None:
    parts = [p.strip() for p in re.split(r",|\band\b", mark.lower().rstrip(".")) if p.strip()]
    return parts if parts and all(p in EXPRESSION_MOODS for p in parts) else None


def _mark_mood(mark: str) -> str:
    parts = _mark_parts(mark) or []
    return ", ".join(mood for part in parts if (mood := EXPRESSION_MOODS[part]))


def _clean_text(value: str) -> str:
    """Header text with mojibake repaired: some corpus files are UTF-8 or DOS read as Latin-1."""
    text = value
    if any(0x80 <= ord(char) <= 0xFF for char in text):
        with contextlib.suppress(UnicodeError):
            text = text.encode("latin-1").decode("utf-8")
    text = text.translate(DOS_UMLAUTS)
    text = "".join(char for char in text if char.isprintable())
    return " ".join(text.split()).strip()


def _clean_title(value: str) -> str:
    """A title as read aloud: no quotes or end stop, "Storyteller, The" as "The Storyteller"."""
    title = " ".join(value.replace('"', "").split()).rstrip(".,;:").strip()
    if title.isupper():
        title = string.capwords(title)
    name, comma, article = title.rpartition(", ")
    return f"{article} {name}" if comma and article in TRAILING_ARTICLES else title


def _split_title_type(value: str) -> tuple[str, str]:
    """A clean title without its " -- Reel" suffix, and the tune type it states, if any."""
    title = _clean_title(value)
    name, _, suffix = title.rpartition(" -- ")
    if name and (found := _tune_type(suffix.replace('"', "").rstrip(".").strip())):
        return _clean_title(name), found
    for segment in TITLE_TYPE_SPLIT.split(title.lower()):
        words = segment.split()
        for size in (2, 1):
            if len(words) >= size and (found := _tune_type(" ".join(words[-size:]))):
                return title, found
    return title, ""


def _tune_type(text: str) -> str:
    return TUNE_TYPES.get(re.sub(r"[\s-]+", " ", text.lower()).strip(), "")


def _genres_and_themes(
    fields: dict[str, list[str]], title_type: str, collection: Collection
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """English genres (R:, G:, the title) and themes (Essen's R:), in the order given."""
    genres: list[str] = []
    themes: list[str] = []
    for value in fields.get("R", []):
        english = _tune_type(value)
        if english:
            genres.append(english)
            continue
        if collection.translate_headers or _looks_german(value):
            for term in _german_terms(value):
                if term in GERMAN_GENRES:
                    genres.append(GERMAN_GENRES[term])
                elif term in GERMAN_THEMES:
                    themes.append(GERMAN_THEMES[term])
        else:
            genres.extend(part.strip().lower() for part in value.split(",") if part.strip())
    genres.extend(found for value in fields.get("G", []) if (found := _tune_type(value)))
    if title_type:
        genres.append(title_type)
    unique = list(dict.fromkeys(genres))
    specific = [genre for genre in unique if genre not in GENERIC_GENRES
                and not any(other.endswith(f" {genre}") for other in unique)]
    return tuple(specific or unique), tuple(dict.fromkeys(themes))


def _looks_german(value: str) -> bool:
    return any(term in GERMAN_GENRES or term in GERMAN_THEMES for term in _german_terms(value))


def _german_terms(value: str) -> list[str]:
    """Essen header terms normalised: "Kinder -, Wiegen - Lied" → ["kinderlied", "wiegenlied"]."""
    text = _clean_text(value).rstrip("]").lower()
    for umlaut, spelled in (("ä", "ae"), ("ö", "oe"), ("ü", "ue"), ("ß", "ss")):
        text = text.replace(umlaut, spelled)
    text = re.sub(r"\s*-\s*", "-", text)
    parts = [part.strip(" \"'?!()") for part in re.split(r"[,;.]|\bund\b|\bbzw\b", text)]
    parts = [part for part in parts if re.search(r"[a-z]", part)]
    terms = []
    for index, part in enumerate(parts):
        if part.endswith("-"):
            head = next((h for later in parts[index + 1:] for h in ELIDED_HEADS
                         if re.sub(r"lieder$", "lied", later).endswith(h)), "")
            part += head
        term = re.sub(r"[-\s]", "", part)
        term = term.lstrip("0123456789")
        terms.append(term[:-2] if term.endswith("lieder") else term)
    return terms


def english_region(value: str) -> str:
    """An O: value as an English place, most specific first: "Europa, Mitteleuropa,
    Deutschland, Hessen, Darmstadt" → "Hesse, Germany"; unknown names are kept as written."""
    text = re.sub(r"\([^)]*\)", " ", _clean_text(value).rstrip("]"))
    names = [" ".join(part.replace("?", " ").split()) for part in re.split(r"[,;/]", text)]
    names = [re.sub(r"\s*-\s*", "-", name) for name in names if name]
    keys = [_place_key(name) for name in names]
    kept = [(key, name) for key, name in zip(keys, names, strict=True) if key not in CONTINENTS]
    if not kept:
        return ""
    country_at = max((i for i, (key, _) in enumerate(kept) if key in COUNTRIES), default=None)
    if country_at is None:
        return ", ".join(_place_name(key, name) for key, name in reversed(kept[:2]))
    country = COUNTRIES[kept[country_at][0]]
    if country_at + 1 < len(kept):
        key, name = kept[country_at + 1]
        place = _place_name(key, name)
        return place if country in place else f"{place}, {country}"
    return country


def _place_key(name: str) -> str:
    text = name.lower()
    for umlaut, spelled in (("ä", "ae"), ("ö", "oe"), ("ü", "ue"), ("ß", "ss")):
        text = text.replace(umlaut, spelled)
    return re.sub(r"[-\s.]", "", text)


def _place_name(key: str, name: str) -> str:
    return PLACES.get(key) or COUNTRIES.get(key) or name


def _region_and_composer(fields: dict[str, list[str]], collection: Collection) -> tuple[str, str]:
    """The region from O: (or a C: that names a people, as Aird's "Irish."), else the
    collection's; the composer from C: unless it names a collector."""
    region = english_region(fields["O"][0]) if "O" in fields else ""
    composer = ""
    for value in fields.get("C", []):
        text = re.sub(r"^by\s+", "", value.strip('" ').rstrip("."), flags=re.IGNORECASE)
        if text.startswith("(") and text.endswith(")"):
            text = text[1:-1]
        origin = COUNTRIES.get(_place_key(text.removesuffix(" Air").removesuffix(" air")))
        if origin:
            region = region or origin
        elif text and "collect" not in text.lower() and not composer:
            composer = string.capwords(text) if text.isupper() else text
    return region or collection.region, composer


# --- Reading the MIDI -------------------------------------------------------------------------


def midi_summary(midi: bytes) -> tuple[int | None, str]:
    """Pitch range in semitones (None without pitched notes) and the note value most gaps
    between onsets have ("eighth notes"), or "" when no value dominates."""
    song = mido.MidiFile(file=io.BytesIO(midi))
    low, high = 128, -1
    gaps: Counter[Fraction] = Counter()
    for track in song.tracks:
        tick, onsets = 0, list[int]()
        for message in track:
            tick += message.time
            if message.type != "note_on" or message.velocity == 0:
                continue
            if message.channel == DRUM_CHANNEL:
                continue
            low, high = min(low, message.note), max(high, message.note)
            if not onsets or onsets[-1] != tick:
                onsets.append(tick)
        gaps.update(_note_lengths([
            Fraction(later - earlier, song.ticks_per_beat).limit_denominator(48)
            for earlier, later in itertools.pairwise(onsets)
        ]))
    semitones = high - low if high >= 0 else None
    if not gaps:
        return semitones, ""
    gap, count = gaps.most_common(1)[0]
    share = count / sum(gaps.values())
    return semitones, NOTE_VALUES.get(gap, "") if share >= MAIN_VALUE_SHARE else ""


def _note_lengths(gaps: list[Fraction]) -> Iterator[Fraction]:
    """Gaps between onsets, with a 2:1 pair in thirds (abc2midi plays `A>B` and hornpipes that
    way) counted as two notes of its mean length, as written, not as triplets."""
    index = 0
    while index < len(gaps):
        pair = gaps[index:index + 2]
        if (len(pair) == 2 and max(pair) == 2 * min(pair) and pair[0].denominator % 3 == 0
                and pair[0] + pair[1] in SWUNG_PAIRS):
            mean = (pair[0] + pair[1]) / 2
            yield from (mean, mean)
            index += 2
        else:
            yield gaps[index]
            index += 1


def range_words(semitones: int) -> str:
    """A range in words: 7 → "a fifth", 12 → "an octave", 16 → "an octave and a third"."""
    if semitones < 12:
        return INTERVALS[max(semitones, 0)]
    octaves, rest = divmod(semitones, 12)
    whole = OCTAVES[octaves] if octaves < len(OCTAVES) else f"{octaves} octaves"
    return f"{whole} and {INTERVALS_ABOVE_OCTAVE[rest]}" if rest else whole


def density_word(notes_per_beat: float) -> str:
    """Notes per quarter-note beat in one voice, in a word: sparse, measured, flowing, busy."""
    return next((word for limit, word in DENSITY_WORDS if notes_per_beat < limit), DENSITY_BUSY)


# --- ABC text ---------------------------------------------------------------------------------


def normalise_tune(text: str) -> str:
    """One tune as stored: LF line ends, no trailing spaces or blank lines, and none of the free
    text that may follow the blank line ending it. Music after that blank line is kept, so
    parse-check still reports it."""
    lines = [line.rstrip() for line in normalise_abc(text).split("\n")]
    key_at = next((i for i, line in enumerate(lines) if line.startswith("K:")), None)
    if key_at is not None:
        end = next((i for i in range(key_at, len(lines)) if not lines[i]), len(lines))
        if not any(is_music_line(line) for line in lines[end:]):
            lines = lines[:end]
    return "\n".join(line for line in lines if line) + "\n"


def _first_error(compiled: CompiledAbc) -> str:
    errors = compiled.check.errors
    return errors[0].one_line() if errors else "no tune found"


# --- MidiCaps ---------------------------------------------------------------------------------


class MidiCapsEntry(BaseModel):
    """One line of MidiCaps' captions file; the fields the index keeps."""

    model_config = ConfigDict(extra="ignore")

    location: str = Field(min_length=1)
    caption: str = Field(min_length=1)
    genre: list[str] = Field(default_factory=list)
    mood: list[str] = Field(default_factory=list)
    key: str = ""
    time_signature: str = ""
    tempo: float | None = None
    instrument_summary: list[str] = Field(default_factory=list)

    @field_validator("genre", "mood", "instrument_summary", mode="before")
    @classmethod
    def _as_list(cls, value: Any) -> Any:
        if value is None:
            return []
        return [value] if isinstance(value, str) else value

    @field_validator("key", "time_signature", mode="before")
    @classmethod
    def _as_text(cls, value: Any) -> Any:
        return "" if value is None else value


def find_captions_files(folder: Path) -> list[Path]:
    """MidiCaps' `train.json`, else every `*.json` / `*.jsonl` in the folder shaped like it."""
    if (folder / MIDICAPS_CAPTIONS).is_file():
        return [folder / MIDICAPS_CAPTIONS]
    found = [path for path in sorted(folder.iterdir())
             if path.suffix in {".json", ".jsonl"} and path.is_file() and _is_captions_file(path)]
    if not found:
        raise FileNotFoundError(
            f"no MidiCaps captions file in {folder}: expected {MIDICAPS_CAPTIONS}, or JSON Lines "
            "(or a JSON array) of objects with location and caption"
        )
    return found


def _is_captions_file(path: Path) -> bool:
    with path.open(encoding="utf-8", errors="replace") as handle:
        head = handle.read(SHAPE_PEEK_CHARS).lstrip()
    if head.startswith("["):
        return '"location"' in head and '"caption"' in head
    try:
        first = json.loads(head.split("\n", 1)[0])
    except ValueError:
        return False
    return isinstance(first, dict) and "location" in first and "caption" in first


def _caption_lines(path: Path) -> Iterator[tuple[int, Any | ValueError]]:
    """(line number, or place in a JSON array; parsed object or the JSON error) per entry."""
    with path.open(encoding="utf-8", errors="replace") as handle:
        is_array = handle.read(SHAPE_PEEK_CHARS).lstrip().startswith("[")
        handle.seek(0)
        if is_array:
            try:
                entries = json.load(handle)
            except ValueError as error:
                yield 1, error
                return
            yield from enumerate(entries if isinstance(entries, list) else [entries], start=1)
            return
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    yield number, json.loads(line)
                except ValueError as error:
                    yield number, error


def _midicaps_jobs(folder: Path, captions: list[Path], settings: Settings) -> Iterator[Job]:
    root = folder.resolve()
    seen: set[str] = set()
    for path in captions:
        for number, parsed in _caption_lines(path):
            where = f"midicaps:{path.name}:{number}"
            if isinstance(parsed, ValueError):
                yield Skipped(where, f"{path.name}:{number} is not valid JSON: "
                                     f"{_one_line(str(parsed))}")
                continue
            try:
                entry = MidiCapsEntry.model_validate(parsed)
            except ValidationError as error:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e['loc']) or 'entry'}: {e['msg']}"
                    for e in error.errors()[:3]
                )
                yield Skipped(where, f"{path.name}:{number} is not a MidiCaps entry: {problems}")
                continue
            record_id = f"midicaps:{entry.location.strip().removeprefix('./')}"
            if record_id in seen:
                yield Skipped(record_id, f"the location appears again, at {path.name}:{number}")
                continue
            seen.add(record_id)
            yield partial(_midicaps_record, record_id, root, entry, settings)


def _midicaps_record(
    record_id: str, root: Path, entry: MidiCapsEntry, settings: Settings
) -> MusicRecord | Skipped:
    midi_path = (root / entry.location.strip()).resolve()
    if not midi_path.is_relative_to(root):
        return Skipped(record_id, f"the location {entry.location!r} leads outside the "
                                  "MidiCaps folder; refused")
    try:
        size = midi_path.stat().st_size
        if size > settings.max_midi_bytes:
            return Skipped(record_id, f"the MIDI file is {size:,} bytes, over the "
                                      f"{settings.max_midi_bytes:,}-byte limit")
        midi = midi_path.read_bytes()
    except OSError as error:
        return Skipped(record_id, f"the MIDI file cannot be read: {error.strerror or error}")
    try:
        abc = midi_to_abc(midi, title="Untitled", max_bars=settings.midi_to_abc_bars,
                          settings=settings)
    except ProgramMissing:
        raise
    except Exception as error:  # one bad file in 168,000 must not stop an ingest
        return Skipped(record_id, f"MIDI to ABC failed: {_one_line(str(error))}")
    compiled = compile_abc(normalise_tune(abc), settings=settings)
    if not compiled.check.ok:
        return Skipped(record_id, f"the converted ABC is not valid: {_first_error(compiled)}")
    return MusicRecord(
        id=record_id, abc=compiled.abc, caption=" ".join(entry.caption.split()),
        source="midicaps", key=entry.key.strip(), meter=entry.time_signature.strip(),
        tempo=round(entry.tempo) if entry.tempo else None,
        genre=", ".join(entry.genre), mood=", ".join(entry.mood),
        instruments=", ".join(entry.instrument_summary), bars=compiled.check.bars,
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]


# --- A folder of ABC files --------------------------------------------------------------------


def load_sidecar_captions(folder: Path) -> dict[str, str]:
    """Captions given beside the tunes: `captions.json`, an object mapping "file.abc" or
    "file.abc:X" (X: number) to a caption, or `captions.jsonl`, lines of such objects or of
    {"file": ..., "X": ..., "caption": ...}. Paths are relative to the folder."""
    captions: dict[str, str] = {}
    for name in SIDECAR_NAMES:
        path = folder / name
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        entries: Iterable[Any] = (
            [json.loads(text)] if name.endswith(".json")
            else (json.loads(line) for line in text.splitlines() if line.strip())
        )
        for entry in entries:
            captions.update(_sidecar_entry(entry, path))
    return captions


def _sidecar_entry(entry: Any, path: Path) -> dict[str, str]:
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: each entry must be a JSON object")
    if "caption" in entry and "file" in entry:
        number = entry.get("X", entry.get("x"))
        key = str(entry["file"]) + (f":{number}" if number is not None else "")
        return {key: str(entry["caption"])}
    return {str(key): str(value) for key, value in entry.items()}


def _abc_dir_jobs(folder: Path, sidecar: dict[str, str], settings: Settings) -> Iterator[Job]:
    for path in sorted(folder.rglob("*.abc")):
        relative = path.relative_to(folder).as_posix()
        file_id = f"abc-dir:{folder.name}/{relative}"
        try:
            text, _ = decode_abc(path.read_bytes())
        except OSError as error:
            yield Skipped(file_id, f"the file cannot be read: {error.strerror or error}")
            continue
        lines = normalise_abc(text).split("\n")
        tunes = split_tunes(lines)
        if not tunes:
            yield Skipped(file_id, "no ABC tune in the file")
        for first, last in tunes:
            yield partial(_tune_job, f"{file_id}:{first + 1}", "abc-dir",
                          "\n".join(lines[first:last + 1]), settings,
                          partial(_abc_file_facts, relative, sidecar))


def _abc_file_facts(
    relative: str, sidecar: dict[str, str], compiled: CompiledAbc
) -> tuple[Collection, str | None]:
    """A tune's book (B:) as its collection; its caption from the sidecar ("file.abc:X"), the
    tune itself, or the sidecar's caption for the whole file, the most specific first."""
    assert compiled.tune is not None
    number = compiled.tune.field_value("X") or ""
    caption = (sidecar.get(f"{relative}:{number}") or _tune_caption(compiled.abc)
               or sidecar.get(relative))
    return Collection((compiled.tune.field_value("B") or "").strip('"')), caption


def _tune_caption(abc: str) -> str:
    """A caption written into the tune: `%caption ...` or `N:caption ...` lines."""
    found = [match["text"].strip() for line in abc.split("\n")
             if (match := TUNE_CAPTION.match(line.strip()))]
    return " ".join(text for text in found if text)
