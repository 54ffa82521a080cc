"""Index records from the three sources: valid ABC, honest English captions, flat metadata.

music21 facts are checked against values read by hand from the corpus files; MidiCaps and
ABC-folder fixtures are built with the toolkit itself, bad files included.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

import pytest

from img2music.settings import Settings
from img2music.tools.check import compile_abc
from img2music.tools.convert import abc_to_midi
from img2music.tools.music21_corpus import iter_corpus_tunes
from img2music.tools.sources import (
    MusicRecord,
    Skipped,
    corpus_record,
    english_region,
    iter_records,
    key_name,
    meter_phrase,
    quarter_note_bpm,
    range_words,
)
from tests.fixtures import JIG, make_midicaps_folder
from tests.needs import needs_programs
from tests.oracles import abc2midi_problems, header_field, music21_voices_and_bars

pytestmark = needs_programs("abc2midi", "midi2abc")

FIRST = 200
GERMAN_WORDS = re.compile(
    r"\b(Romanze|Ballade|Lied|Liebe|Europa|Mitteleuropa|Deutschland|Kinder|Tanz|Klage)\b"
)
# Read by hand from the corpus files (header values, and bars counted in the music).
HAND_READ: dict[str, dict[str, object]] = {
    "essenFolksong/altdeu10.abc:2": {
        "title": "Das Hildebrandslied", "key": "G major", "meter": "4/2", "bars": 22,
        "genre": "romance, ballad", "region": "Germany", "tempo": None,
    },
    "essenFolksong/kinder0.abc:2": {
        "title": "Schlaf Kindlein Schlaf", "key": "F major", "meter": "2/4",
        "genre": "children's song, lullaby", "region": "Hesse, Germany",
    },
    "oneills1850/0001-0050.abc:541": {
        "title": "The Lucky Lover", "key": "E minor", "meter": "4/4", "region": "Ireland",
        "mood": "cheerful",
    },
    "ryansMammoth/LarryGrogansJig.abc:1": {
        "title": "Larry Grogan's", "key": "G major", "meter": "6/8", "genre": "jig",
        "region": "", "instruments": "",
    },
    "ryansMammoth/YouBetReel.abc:1": {
        "title": "You Bet", "key": "G major", "meter": "2/4", "genre": "reel",
    },
    "airdsAirs/book3.abc:2697": {
        "title": "Air de Chasse", "key": "A major", "meter": "6/8", "tempo": 180,
        "instruments": "fife, violin, flute",
    },
}
KNOWN_FAILURE = "essenFolksong/altdeu20.abc:1001"  # M: FREI4/4, a meter no reader knows
KNOWN_FAULT = "essenFolksong/altdeu10.abc:72"  # bar 3 holds 12 quarter notes in 4/2


@cache
def first_items() -> list[MusicRecord | Skipped]:
    return list(iter_records("music21", limit=FIRST))


@cache
def hand_read_records() -> dict[str, MusicRecord | Skipped]:
    return {tune.id: corpus_record(tune) for tune in iter_corpus_tunes()
            if tune.id in HAND_READ or tune.id in (KNOWN_FAILURE, KNOWN_FAULT)}


def _hand_read(tune_id: str) -> MusicRecord:
    record = hand_read_records()[tune_id]
    assert isinstance(record, MusicRecord), record
    return record


def _records(items: list[MusicRecord | Skipped]) -> list[MusicRecord]:
    return [item for item in items if isinstance(item, MusicRecord)]


def _skips(items: list[MusicRecord | Skipped]) -> dict[str, str]:
    return {item.id: item.reason for item in items if isinstance(item, Skipped)}


# --- music21 ----------------------------------------------------------------------------------


def test_first_records_are_valid_unique_and_limited() -> None:
    items = first_items()
    records = _records(items)
    assert len(records) == FIRST
    assert isinstance(items[-1], MusicRecord)
    assert len({item.id for item in items}) == len(items)
    assert all(record.id.startswith("music21:essenFolksong/") for record in records)
    for record in records:
        assert abc2midi_problems(record.abc) == [], record.id
        assert record.abc.endswith("\n") and "\n\n" not in record.abc


def test_captions_are_english_and_state_the_headers() -> None:
    for record in _records(first_items()):
        caption = record.caption
        without_title = caption.replace(f"'{record.title}'", "")
        assert not GERMAN_WORDS.search(without_title), caption
        key = header_field(record.abc, "K")
        assert record.key.split()[0] == key[:2].strip().rstrip("m"), (key, record.key)
        assert record.key in caption
        meter = header_field(record.abc, "M")
        assert (record.meter or "free time") in caption
        assert meter == "none" or record.meter == meter
        assert f"'{record.title}'" in caption
        assert f"{record.bars} bars" in caption
        assert "the Essen Folksong Collection" in caption


def test_hand_read_records() -> None:
    for tune_id, expected in HAND_READ.items():
        record = _hand_read(tune_id)
        for field, value in expected.items():
            assert getattr(record, field) == value, (tune_id, field)
        assert record.key in record.caption and f"'{record.title}'" in record.caption


def test_collections_named_and_facts_worded() -> None:
    essen = _hand_read("essenFolksong/kinder0.abc:2")
    assert essen.caption.startswith("A children's song from Hesse, Germany, in F major")
    assert "also classed as a lullaby" in essen.caption.lower()
    oneill = _hand_read("oneills1850/0001-0050.abc:541")
    assert "O'Neill's Music of Ireland (1903)" in oneill.caption
    assert 'Marked "Cheerfully".' in oneill.caption
    ryan = _hand_read("ryansMammoth/LarryGrogansJig.abc:1")
    assert "Ryan's Mammoth Collection (1883)" in ryan.caption
    assert "jig" in ryan.caption and "usually played at a lively pace" in ryan.caption
    assert "6/8 time (compound duple)" in ryan.caption
    assert "credited to Jas. Hand" in _hand_read("ryansMammoth/YouBetReel.abc:1").caption
    aird = _hand_read("airdsAirs/book3.abc:2697")
    assert "at a lively 180 bpm" in aird.caption  # Q:3/8=120 is 180 quarter notes a minute
    assert "for fife, violin or flute" in aird.caption


def test_known_failing_tune_is_skipped_with_its_error() -> None:
    skipped = hand_read_records()[KNOWN_FAILURE]
    assert isinstance(skipped, Skipped) and skipped.id == f"music21:{KNOWN_FAILURE}"
    assert "M:FREI4/4 is not a meter" in skipped.reason
    assert "\n" not in skipped.reason


def test_a_tune_with_a_fault_is_kept_since_it_plays() -> None:
    record = _hand_read(KNOWN_FAULT)
    check = compile_abc(record.abc).check
    assert check.ok and "bar 3 lasts 12/4 but M:4/2 bars last 8/4" in check.faults[0].message


def test_captions_are_deterministic_and_varied() -> None:
    tune = next(t for t in iter_corpus_tunes(("oneills1850",)) if t.id in HAND_READ)
    assert corpus_record(tune) == corpus_record(tune)
    openings = {record.caption.split()[0] for record in _records(first_items())}
    assert {"A", "This"} <= openings


def test_metadata_is_flat_without_none() -> None:
    record = _records(first_items())[0]
    metadata = record.metadata()
    assert set(metadata) == set(MusicRecord.model_fields) - {"id", "caption"}
    assert metadata["tempo"] == 0 and metadata["abc"] == record.abc
    assert all(isinstance(value, str | int | float | bool) for value in metadata.values())


def test_tempo_in_quarter_notes() -> None:
    assert quarter_note_bpm("Q:3/8=60") == 90
    assert quarter_note_bpm("Q:1/4=120") == 120
    assert quarter_note_bpm("Q:120") == 120
    assert quarter_note_bpm("1/2=104") == 208
    assert quarter_note_bpm('1/4=80 "Slow"') == 80
    assert quarter_note_bpm('"Slowly and Smoothly"') is None


def test_words_for_keys_meters_ranges_and_regions() -> None:
    assert [key_name(k) for k in ("Am", "Gmix", "A Dorian", "Bb", "F#m", "G clef=bass")] == [
        "A minor", "G mixolydian", "A dorian", "Bb major", "F# minor", "G major"
    ]
    assert key_name("none") == key_name("HP") == ""
    assert meter_phrase("6/8") == "6/8 time (compound duple)"
    assert meter_phrase("C|") == "cut time (2/2)"
    assert meter_phrase("none") == "free time"
    assert [range_words(n) for n in (0, 7, 12, 16, 21, 24, 26)] == [
        "a unison", "a fifth", "an octave", "an octave and a third", "an octave and a sixth",
        "two octaves", "two octaves and a second",
    ]
    assert english_region("Europa, Mitteleuropa, Deutschland, Hessen, Darmstadt") == (
        "Hesse, Germany"
    )
    assert english_region("Mitteleuropa, Deutschland / Frankreich, Lothringen") == (
        "Lorraine, France"
    )
    assert english_region("China, Shaanxi, Shanbei") == "Shaanxi, China"
    assert english_region("Luxemburg") == "Luxembourg"


def test_music21_takes_no_path_and_limit_zero_yields_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="takes no path"):
        iter_records("music21", path=tmp_path)
    assert list(iter_records("music21", limit=0)) == []


# --- MidiCaps ---------------------------------------------------------------------------------

MAX_BARS = 6


@pytest.fixture(scope="module")
def midicaps_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_midicaps_folder(tmp_path_factory.mktemp("midicaps"))


@cache
def _midicaps_items(folder: Path) -> list[MusicRecord | Skipped]:
    return list(iter_records("midicaps", path=folder,
                             settings=Settings(midi_to_abc_bars=MAX_BARS)))


def test_midicaps_good_entries_become_records(midicaps_folder: Path) -> None:
    records = {r.id: r for r in _records(_midicaps_items(midicaps_folder))}
    assert list(records) == [
        "midicaps:lmd_full/1/jig.mid", "midicaps:lmd_full/2/duet.mid",
        "midicaps:lmd_full/3/drums.mid",
    ]
    jig = records["midicaps:lmd_full/1/jig.mid"]
    assert jig.caption == "A cheerful folk jig in D major."
    assert (jig.source, jig.genre, jig.mood, jig.key, jig.meter, jig.tempo, jig.instruments) == (
        "midicaps", "folk", "happy, energetic", "D major", "6/8", 120, "Piano"
    )
    duet = records["midicaps:lmd_full/2/duet.mid"]
    assert (duet.genre, duet.instruments) == ("classical, folk", "Flute, Acoustic Bass")
    assert music21_voices_and_bars(duet.abc)[0] == 2
    assert records["midicaps:lmd_full/3/drums.mid"].tempo == 120
    for record in records.values():
        assert abc2midi_problems(record.abc) == [], record.id
        assert record.bars == MAX_BARS  # both tunes are longer
        assert music21_voices_and_bars(record.abc)[1] == MAX_BARS


def test_midicaps_drops_the_drum_channel(midicaps_folder: Path) -> None:
    records = {r.id: r for r in _records(_midicaps_items(midicaps_folder))}
    drums = records["midicaps:lmd_full/3/drums.mid"]
    assert "channel 10" not in drums.abc
    assert len(re.findall(r"^V:", drums.abc, re.MULTILINE)) == 1
    assert music21_voices_and_bars(drums.abc)[0] == 1
    assert drums.abc == records["midicaps:lmd_full/1/jig.mid"].abc


def test_midicaps_bad_entries_are_skipped_with_reasons(midicaps_folder: Path) -> None:
    skips = _skips(_midicaps_items(midicaps_folder))
    assert set(skips) == {
        "midicaps:train.json:3", "midicaps:lmd_full/4/corrupt.mid",
        "midicaps:lmd_full/5/missing.mid", "midicaps:../outside.mid", "midicaps:train.json:8",
    }
    assert "not valid JSON" in skips["midicaps:train.json:3"]
    assert "not a readable MIDI file" in skips["midicaps:lmd_full/4/corrupt.mid"]
    assert "cannot be read" in skips["midicaps:lmd_full/5/missing.mid"]
    assert "outside the MidiCaps folder" in skips["midicaps:../outside.mid"]
    assert "caption" in skips["midicaps:train.json:8"]
    assert all("\n" not in reason for reason in skips.values())


def test_midicaps_accepts_a_json_array_and_needs_a_captions_file(tmp_path: Path) -> None:
    (tmp_path / "tune.mid").write_bytes(abc_to_midi(JIG))
    with pytest.raises(FileNotFoundError, match="no MidiCaps captions file"):
        iter_records("midicaps", path=tmp_path)
    (tmp_path / "captions.json").write_text(
        json.dumps([{"location": "tune.mid", "caption": "A jig.", "genre": ["folk"]}]),
        encoding="utf-8",
    )
    [record] = list(iter_records("midicaps", path=tmp_path, limit=1))
    assert isinstance(record, MusicRecord)
    assert (record.id, record.caption, record.genre) == ("midicaps:tune.mid", "A jig.", "folk")


# --- A folder of ABC files --------------------------------------------------------------------

MORNING = """X:1
T:Morning
M:6/8
L:1/8
K:D
A|d2f a2f|g2e c2A|d2f a2f|e3 d2|]

X:2
T:Broken
M:4/4
L:1/8
K:G
GABc [defg a|]
"""
EVENING = """X:1
T:Evening
%caption A calm evening melody over a still lake.
M:3/4
L:1/4
K:Em
E G B | e2 d | B A G | E3 |]

X:2
T:Night
M:3/4
L:1/4
K:Am
A c e | a2 g | e d c | A3 |]
"""
WALTZ_LATIN1 = """X:7
T:Valse d'été
R:waltz
O:France
M:3/4
L:1/4
Q:1/4=160
K:G
D | G B d | g2 f | e d c | B2 A | G B d | g2 f | e d B | G2 |]
"""


@pytest.fixture(scope="module")
def abc_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("abc") / "tunes"
    (folder / "sub").mkdir(parents=True)
    (folder / "morning.abc").write_text(MORNING, encoding="utf-8")
    (folder / "sub" / "evening.abc").write_text(EVENING, encoding="utf-8")
    (folder / "waltz.abc").write_bytes(WALTZ_LATIN1.encode("latin-1"))
    (folder / "captions.json").write_text(json.dumps({
        "morning.abc:1": "A bright jig for a sunny morning.",
        "sub/evening.abc": "Quiet tunes for the end of the day.",
    }), encoding="utf-8")
    return folder


def test_abc_folder_records_and_captions(abc_folder: Path) -> None:
    items = list(iter_records("abc-dir", path=abc_folder))
    records = {r.id: r for r in _records(items)}
    assert list(records) == [
        "abc-dir:tunes/morning.abc:1", "abc-dir:tunes/sub/evening.abc:1",
        "abc-dir:tunes/sub/evening.abc:9", "abc-dir:tunes/waltz.abc:1",
    ]
    captions = {record_id: r.caption for record_id, r in records.items()}
    assert captions["abc-dir:tunes/morning.abc:1"] == "A bright jig for a sunny morning."
    assert captions["abc-dir:tunes/sub/evening.abc:1"] == (
        "A calm evening melody over a still lake."
    )
    assert captions["abc-dir:tunes/sub/evening.abc:9"] == "Quiet tunes for the end of the day."
    waltz = records["abc-dir:tunes/waltz.abc:1"]
    assert (waltz.title, waltz.key, waltz.meter, waltz.tempo, waltz.genre, waltz.region) == (
        "Valse d'été", "G major", "3/4", 160, "waltz", "France"
    )
    assert waltz.caption.startswith("A waltz from France") or waltz.caption.startswith(
        "This waltz from France"
    )
    assert "'Valse d'été'" in waltz.caption and "160 bpm" in waltz.caption
    assert records["abc-dir:tunes/sub/evening.abc:1"].key == "E minor"
    for record in records.values():
        assert abc2midi_problems(record.abc) == [], record.id


def test_abc_folder_skips_a_broken_tune(abc_folder: Path) -> None:
    skips = _skips(list(iter_records("abc-dir", path=abc_folder)))
    assert list(skips) == ["abc-dir:tunes/morning.abc:8"]
    assert "a chord opened with [ is not closed" in skips["abc-dir:tunes/morning.abc:8"]


def test_captions_jsonl_sidecar(tmp_path: Path) -> None:
    (tmp_path / "morning.abc").write_text(MORNING.split("\n\n")[0] + "\n", encoding="utf-8")
    (tmp_path / "captions.jsonl").write_text(
        json.dumps({"file": "morning.abc", "X": 1, "caption": "Sunrise over the hills."}) + "\n",
        encoding="utf-8",
    )
    [record] = list(iter_records("abc-dir", path=tmp_path))
    assert isinstance(record, MusicRecord) and record.caption == "Sunrise over the hills."


def test_limit_counts_records_not_skips(abc_folder: Path) -> None:
    items = list(iter_records("abc-dir", path=abc_folder, limit=2))
    assert [type(item) for item in items] == [MusicRecord, Skipped, MusicRecord]


def test_a_folder_source_needs_a_folder(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        iter_records("abc-dir", path=tmp_path / "absent")
    with pytest.raises(NotADirectoryError):
        iter_records("midicaps")
