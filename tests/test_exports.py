"""The editable exports: MusicXML that holds the notes that play, and a MIDI with a named track
per voice carrying its program; in a run's files and report, and from `img2music render`.

The oracles share no code with the exporters: abc2midi run directly on the tune (its `%%MIDI`
lines, which change how notes are played but not what is written, left out, and the notes of a
chord not staggered; grace notes, which it plays by taking time from the next note, ignored with
-NGRA), its MIDI read here with mido;
the MusicXML read back by music21's MusicXML reader; voices and programs read from the ABC text
with this file's own patterns.
"""

from __future__ import annotations

import io
import json
import re
from fractions import Fraction
from pathlib import Path
from typing import Any

import mido
import pytest
from music21 import converter, harmony, stream
from typer.testing import CliRunner

from img2music.cli.main import app
from img2music.pipeline.runs import compose
from img2music.tools.abc.check import check_abc
from img2music.tools.abc.extract import extract_abc
from img2music.tools.render.tune import render_all
from tests.needs import needs_programs
from tests.oracles import abc2midi_output
from tests.realworld import llm_replies
from tests.scripted import ScriptedChatModel
from tests.test_compose_cli import PHOTO
from tests.test_graph import DESCRIPTION, Examples, answer

Note = tuple[Fraction, int, Fraction]  # onset and length in quarter notes, MIDI pitch
GRID = 96  # notes are compared on a 1/96-quarter grid: abc2midi starts each a tick late
MIDI_DIRECTIVE = re.compile(r"^%%MIDI\b.*$", re.MULTILINE)
KEY_LINE = re.compile(r"^K:.*$", re.MULTILINE)

# What models get wrong and music21 reads otherwise than abc2midi, each written once: voices in
# blocks that come back, inline voices, accidentals that hold to the end of the bar, a tempo
# with spaces, a bar longer than its meter closing a repeat, triplets, chords, ties, a clef.
QUARTET = """X:1
T:Harbour quartet
M:4/4
L:1/8
Q:1/4 = 96
K:Dm
V:1 name="Violin I"
%%MIDI program 40
V:2 name="Viola"
%%MIDI program 41
V:3 clef=bass name="Cello"
%%MIDI program 42
V:1
|: d2 ^c2 d2 c2 | (3ded c2 A4 | [DF]4 f2 =f2- | f8 :|
V:2
|: A4 A4 | G4 E4 | F4 A4 | A4 A2 A2 A2 :|
V:3
|: D,4 A,,4 | B,,4 C,4 | D,8- | D,8 :|
[V:1] d4 e4 | f8 |]
[V:2] A4 c4 | d8 |]
[V:3] D,4 C,4 | D,8 |]
"""
SOLO = """X:1
T:Flute alone
M:3/4
L:1/4
Q:1/4=80
K:G
%%MIDI program 73
G A B | c2 B | A3 |]
"""


def quantised(value: Fraction | float) -> Fraction:
    return Fraction(round(Fraction(value) * GRID), GRID)


def abc2midi_notes(abc: str) -> list[list[Note]]:
    """Each voice track's notes as abc2midi plays what is written, repeats played out."""
    written = KEY_LINE.sub(lambda key: f"{key[0]}\n%%MIDI chordattack 0",
                           MIDI_DIRECTIVE.sub("%", abc), count=1)
    _, midi = abc2midi_output(written, flags=("-NGUI", "-NGRA"))
    assert midi is not None
    song = mido.MidiFile(file=io.BytesIO(midi))
    voices = []
    for track in song.tracks[1:] if song.type == 1 else song.tracks:
        tick, notes = 0, []
        sounding: dict[int, list[int]] = {}
        for message in track:
            tick += message.time
            if message.type == "note_on" and message.velocity:
                sounding.setdefault(message.note, []).append(tick)
            elif message.type in ("note_on", "note_off") and sounding.get(message.note):
                start = sounding[message.note].pop(0)
                notes.append((quantised(Fraction(start, song.ticks_per_beat)), message.note,
                              quantised(Fraction(tick - start, song.ticks_per_beat))))
        voices.append(sorted(notes))
    return voices


def musicxml_notes(path: Path) -> list[list[Note]]:
    """Each part's notes as music21's MusicXML reader reads the file, repeats played out and
    tied notes joined; chord symbols are not notes."""
    score = converter.parse(path, format="musicxml")
    assert isinstance(score, stream.Score)
    voices = []
    for part in score.parts:
        played = part.expandRepeats().stripTies()
        voices.append(sorted(
            (quantised(note.getOffsetInHierarchy(played)), pitch.midi,
             quantised(note.quarterLength))
            for note in played.flatten().notes
            if not isinstance(note, harmony.ChordSymbol) and not note.duration.isGrace
            for pitch in note.pitches))
    return voices


def real_tunes() -> list[tuple[str, str]]:
    """The real model replies that hold a tune the checker passes, as the model wrote them."""
    tunes = []
    for reply in llm_replies():
        abc = extract_abc(reply.read_text(encoding="utf-8")).abc
        if abc and check_abc(abc).ok:
            tunes.append((reply.stem, abc))
    return tunes


REAL_TUNES = real_tunes()


def test_the_real_replies_give_enough_tunes_to_export() -> None:
    assert len(REAL_TUNES) >= 15  # so the round trip below cannot pass on a handful


@needs_programs("abc2midi")
@pytest.mark.parametrize(("name", "abc"), [*REAL_TUNES, ("quartet", QUARTET), ("solo", SOLO)],
                         ids=[name for name, _ in REAL_TUNES] + ["quartet", "solo"])
def test_musicxml_holds_the_notes_that_play(name: str, abc: str, tmp_path: Path) -> None:
    report = render_all(abc, tmp_path, wav=False, svg=False, png=False, musicxml=True)
    assert report.problems == []
    assert musicxml_notes(report.files["musicxml"]) == abc2midi_notes(abc)


def test_musicxml_parts_are_named_and_play_their_instruments(tmp_path: Path) -> None:
    report = render_all(QUARTET, tmp_path, midi=False, wav=False, svg=False, png=False,
                        musicxml=True)
    score = converter.parse(report.files["musicxml"], format="musicxml")
    assert isinstance(score, stream.Score)
    assert [part.partName for part in score.parts] == ["Violin I", "Viola", "Cello"]
    instruments = [part.getInstrument() for part in score.parts]
    assert [played.midiProgram for played in instruments if played] == [40, 41, 42]
    assert score.metadata.bestTitle == "Harbour quartet"
    assert [clef.sign for part in score.parts
            if (clef := part.recurse().getElementsByClass("Clef").first())] == ["G", "G", "F"]


def declared_voices(abc: str) -> list[tuple[str, int]]:
    """(name, program) of each voice, read from the text: a voice's program is the
    `%%MIDI program` line under its first `V:` line (or the header's, for a tune of one voice);
    piano (0) when it has none."""
    names: dict[str, str] = {}
    programs: dict[str, int] = {}
    current = None
    header_program = 0
    for line in abc.splitlines():
        if match := re.match(r"^V:\s*(\S+)(.*)$", line):
            current = match[1]
            named = re.search(r'name="([^"]+)"', match[2])
            names.setdefault(current, named[1] if named else f"Voice {current}")
        elif match := re.match(r"^%%MIDI program (\d+)$", line):
            if current is None:
                header_program = int(match[1])
            else:
                programs.setdefault(current, int(match[1]))
    if not names:
        return [("Voice 1", header_program)]
    return [(name, programs.get(voice, 0)) for voice, name in names.items()]


@needs_programs("abc2midi")
@pytest.mark.parametrize("abc", [QUARTET, SOLO], ids=["quartet", "solo"])
def test_the_midi_has_a_named_track_per_voice_with_its_program(abc: str, tmp_path: Path) -> None:
    report = render_all(abc, tmp_path, wav=False, svg=False, png=False)
    song = mido.MidiFile(report.files["midi"])
    conductor, *tracks = song.tracks
    assert song.type == 1
    assert not any(message.type == "note_on" for message in conductor)
    assert any(message.type == "set_tempo" for message in conductor)
    assert [(track.name, first_program(track)) for track in tracks] == declared_voices(abc)
    channels = [{m.channel for m in track if hasattr(m, "channel")} for track in tracks]
    assert all(len(used) == 1 for used in channels)
    assert len(set.union(*channels)) == len(tracks)  # a channel of its own each
    played = [sorted((note.time, note.note) for note in absolute(track)
                     if note.type == "note_on" and note.velocity) for track in tracks]
    _, oracle_midi = abc2midi_output(abc, flags=("-NGUI",))
    assert oracle_midi is not None
    oracle = mido.MidiFile(file=io.BytesIO(oracle_midi))
    expected = [sorted((note.time, note.note) for note in absolute(track)
                       if note.type == "note_on" and note.velocity)
                for track in oracle.tracks]
    assert played == [notes for notes in expected if notes]  # abc2midi's notes, unchanged


def first_program(track: mido.MidiTrack) -> int | None:
    """The program of the track's first channel event, when that event is a program change at
    the track's start."""
    tick = 0
    for message in track:
        tick += message.time
        if hasattr(message, "channel"):
            return message.program if message.type == "program_change" and tick == 0 else None
    return None


def absolute(track: mido.MidiTrack) -> list[mido.Message]:
    tick, timed = 0, []
    for message in track:
        tick += message.time
        timed.append(message.copy(time=tick))
    return timed


@needs_programs("abc2midi")
def test_music21_reads_only_the_filtered_text_and_a_failure_costs_only_the_musicxml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    read: list[str] = []
    real_parse = converter.parse

    def parse(value: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("format") == "abc":
            read.append(str(value))
        return real_parse(value, *args, **kwargs)

    monkeypatch.setattr(converter, "parse", parse)
    hostile = SOLO.replace("K:G\n", "K:G\n%%abc-include /etc/passwd\n%%beginsvg\n<script>"
                           "alert(1)</script>\n%%endsvg\n")
    report = render_all(hostile, tmp_path / "ok", wav=False, svg=False, png=False,
                        musicxml=True)
    assert report.problems == [] and report.files["musicxml"].is_file()
    assert read and not any("/etc/passwd" in text or "<script>" in text for text in read)

    def broken(value: Any, *args: Any, **kwargs: Any) -> Any:
        raise IndexError("list index out of range")

    monkeypatch.setattr(converter, "parse", broken)
    report = render_all(SOLO, tmp_path / "broken", wav=False, svg=False, png=False,
                        musicxml=True)
    assert report.problems == ["musicxml: music21 could not write the MusicXML: list index out "
                               "of range"]
    assert sorted(path.name for path in (tmp_path / "broken").iterdir()) == ["tune.mid"]


@needs_programs("abc2midi")
def test_render_writes_the_exports_of_an_abc_file(tmp_path: Path) -> None:
    source = tmp_path / "quartet.abc"
    source.write_text(QUARTET, encoding="utf-8")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["render", str(source), "--out", str(out), "--musicxml",
                                      "--midi"])
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in out.iterdir()) == ["tune.mid", "tune.musicxml"]
    assert f"musicxml: {out / 'tune.musicxml'}" in result.stdout
    assert musicxml_notes(out / "tune.musicxml") == abc2midi_notes(QUARTET)


@needs_programs("abc2midi")
def test_a_run_writes_and_lists_its_exports(tmp_path: Path) -> None:
    # The same answer to every turn: the loop asks again about the over-full bar.
    model = ScriptedChatModel(replies=[DESCRIPTION, *[answer(QUARTET)] * 8])
    result = compose(PHOTO, out_dir=tmp_path / "run", model_for=lambda _: model,
                     retriever_for=lambda _: Examples(), rag=False, refine=False,
                     explain="none")
    assert result.ok, result.error
    report = json.loads((tmp_path / "run" / "report.json").read_text(encoding="utf-8"))
    assert {"tune.mid", "tune.musicxml"} <= set(report["files"])
    assert report["render_problems"] == []
    html = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    assert '<a href="tune.musicxml">tune.musicxml</a>: MusicXML' in html
    assert '<a href="tune.mid">tune.mid</a>: MIDI, a track per voice' in html
    assert musicxml_notes(tmp_path / "run" / "tune.musicxml") == abc2midi_notes(QUARTET)
