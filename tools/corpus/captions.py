"""Captions for tunes that come without one, in the style of MidiCaps captions: kind, key,
meter and tempo first (CLIP reads the start best), then length, range and motion, then themes,
marking and source. A caption states only what the tune's headers, its collection or its notes
say (`headers`, `midi_summary`).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from img2music.settings import Settings
from img2music.tools.abc.check import CompiledAbc, compile_abc
from img2music.tools.abc.diagnostics import one_line
from img2music.tools.corpus.headers import (
    clean_text,
    expression_marks,
    genres_and_themes,
    key_name,
    mark_mood,
    meter_figures,
    meter_phrase,
    pace_word,
    read_tempo,
    region_and_composer,
    split_title_type,
)
from img2music.tools.corpus.midi_summary import density_word, midi_summary, range_words
from img2music.tools.corpus.records import (
    Collection,
    MusicRecord,
    Skipped,
    SourceName,
    first_error,
    normalise_tune,
)
from img2music.tools.corpus.vocabulary import NUMBER_WORDS, TYPICAL_PACE

logger = logging.getLogger(__name__)


def tune_job(
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
        return Skipped(record_id, first_error(compiled))
    try:
        collection, caption = describe(compiled)
        return tune_record(record_id, source, compiled, collection, caption)
    except Exception as error:  # a header nobody foresaw must not stop an ingest
        logger.exception("could not describe %s", record_id)
        return Skipped(record_id, f"could not describe the tune: {one_line(str(error))}")


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
        value = clean_text(header.value.split("%", 1)[0])
        if value:
            fields.setdefault(header.letter, []).append(value)
    titles = [split_title_type(value) for value in fields.get("T", [])]
    title, title_type = titles[0] if titles else ("", "")
    genres, themes = genres_and_themes(fields, title_type, collection)
    tempo, pulse, q_marks = read_tempo(fields.get("Q", []))
    marks = q_marks + [mark for value in fields.get("N", []) for mark in expression_marks(value)]
    region, composer = region_and_composer(fields, collection)
    semitones, main_value = midi_summary(compiled.midi)
    voices = max(check.voices, 1)
    beats = check.duration_beats
    meter_value = (fields.get("M") or ["none"])[0]
    pace = ""
    if tempo is not None:
        pace = f"at {tempo} bpm" if marks else f"at a {pace_word(pulse)} {tempo} bpm"
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
        moods=tuple(dict.fromkeys(m for mark in marks if (m := mark_mood(mark)))),
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
