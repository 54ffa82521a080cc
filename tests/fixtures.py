"""Test data built with the toolkit itself: a MidiCaps-shaped folder with good and bad entries."""

from __future__ import annotations

import io
import json
from pathlib import Path

import mido

from img2music.tools.abc.convert import abc_to_midi

JIG = """X:1
T:Morning jig
M:6/8
L:1/8
Q:3/8=80
K:D
|:A|d2f a2f|g2e c2A|d2f a2f|e3 d2:|
|:f|g2e c2e|f2d A2d|g2e c2e|d3 d2:|
d2f a2f|g2e c2A|d2f a2f|e3 d3|
"""
DUET = """X:1
T:Duet
M:3/4
L:1/8
Q:1/4=100
K:G
V:1
%%MIDI program 73
B2 c2 d2 | g4 d2 | e2 d2 B2 | A6 | B2 c2 d2 | g4 d2 | e2 d2 c2 | B6 |]
V:2
%%MIDI program 32
G,4 D,2 | G,4 B,2 | C4 D2 | D,6 | G,4 D,2 | E,4 B,2 | C4 D2 | G,6 |]
"""


def _with_drums(midi: bytes) -> bytes:
    song = mido.MidiFile(file=io.BytesIO(midi))
    song.type = 1
    drums = mido.MidiTrack()
    for beat in range(48):
        drums.append(mido.Message("note_on", channel=9, note=36, velocity=100,
                                  time=0 if beat == 0 else 240))
        drums.append(mido.Message("note_off", channel=9, note=36, velocity=0, time=240))
    song.tracks.append(drums)
    data = io.BytesIO()
    song.save(file=data)
    return data.getvalue()


def _entry(location: str, caption: str, **extra: object) -> str:
    return json.dumps({"location": location, "caption": caption, **extra})


def make_midicaps_folder(root: Path) -> Path:
    """MidiCaps' layout: a captions file in JSON Lines and MIDI files under `lmd_full/`.

    Two good entries, one with a drum track, and a corrupt file, a missing file, a path that
    escapes the folder, a line that is not JSON and one without a location.
    """
    folder = root / "MidiCaps"
    files = {
        "lmd_full/1/jig.mid": abc_to_midi(JIG),
        "lmd_full/2/duet.mid": abc_to_midi(DUET),
        "lmd_full/3/drums.mid": _with_drums(abc_to_midi(JIG)),
        "lmd_full/4/corrupt.mid": b"MThd\x00\x00\x00\x06 not really a MIDI file",
    }
    for location, data in files.items():
        (folder / location).parent.mkdir(parents=True, exist_ok=True)
        (folder / location).write_bytes(data)
    (root / "outside.mid").write_bytes(abc_to_midi(JIG))
    lines = [
        _entry("lmd_full/1/jig.mid", "A cheerful folk jig in D major.", genre=["folk"],
               mood=["happy", "energetic"], key="D major", time_signature="6/8", tempo=120,
               instrument_summary=["Piano"], test_set=False),
        _entry("lmd_full/2/duet.mid", "A gentle classical duet for flute and bass.",
               genre=["classical", "folk"], mood=["calm"], key="G major",
               time_signature="3/4", tempo=100, instrument_summary=["Flute", "Acoustic Bass"]),
        "{this line is not JSON",
        _entry("lmd_full/3/drums.mid", "A folk jig with a steady kick drum.", genre="folk",
               key="D major", time_signature="6/8", tempo=120.4),
        _entry("lmd_full/4/corrupt.mid", "Broken."),
        _entry("lmd_full/5/missing.mid", "Nowhere."),
        _entry("../outside.mid", "Outside the folder."),
        json.dumps({"location": "lmd_full/1/jig.mid"}),
    ]
    (folder / "train.json").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


