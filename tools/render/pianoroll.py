"""The piano roll: the MIDI's notes in seconds, pitch names up, one colour per voice, drawn with
matplotlib so a listener can follow it while the tune plays."""

from __future__ import annotations

import io
import tempfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from img2music.settings import Settings, get_settings
from img2music.tools.files import move_atomic
from img2music.tools.render.checks import RenderError, check_size

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Notes = npt.NDArray[np.float64]  # one row per note: start (s), end (s), MIDI pitch
PNG_DPI = 100
PITCH_NAMES = ("C", "C♯", "D", "E♭", "E", "F", "F♯", "G", "A♭", "A", "B♭", "B")
MAX_LABELLED_PITCHES = 24


def render_pianoroll(midi: bytes, out: Path, *, settings: Settings | None = None) -> Path:
    """Draw `midi` as a piano roll PNG that a listener can follow while the tune plays.

    Seconds run across (as in the audio), pitch names up, and each voice (MIDI track) has its
    own colour.
    """
    settings = settings or get_settings()
    check_size("MIDI", len(midi), settings.max_midi_bytes)
    voices = _read_notes(midi)
    figure = _pianoroll_figure(voices)
    with tempfile.TemporaryDirectory(prefix="img2music-png-") as work:
        png = Path(work) / "pianoroll.png"
        figure.savefig(png, format="png", dpi=PNG_DPI)
        return move_atomic(png, out)


def _read_notes(midi: bytes) -> list[Notes]:
    """The notes of each MIDI track that has any, timed in seconds through the tempo map."""
    import mido

    try:
        song = mido.MidiFile(file=io.BytesIO(midi))
    except (OSError, EOFError, ValueError, KeyError, IndexError) as error:
        raise RenderError(f"the MIDI cannot be read: {error}") from error
    ticks_per_beat = int(song.ticks_per_beat)
    if ticks_per_beat <= 0:
        raise RenderError("the MIDI has no usable time division")
    to_seconds = _tempo_map(song.tracks, ticks_per_beat)
    voices: list[Notes] = []
    for track in song.tracks:
        tick = 0
        sounding: dict[tuple[int, int], list[int]] = defaultdict(list)
        notes: list[tuple[int, int, int]] = []
        for message in track:
            tick += int(message.time)
            if message.type not in ("note_on", "note_off"):
                continue
            key = (int(message.channel), int(message.note))
            if message.type == "note_on" and message.velocity > 0:
                sounding[key].append(tick)
            elif sounding[key]:
                notes.append((sounding[key].pop(0), tick, key[1]))
        notes.extend((start, tick, key[1]) for key, starts in sounding.items() for start in starts)
        if notes:
            table = np.array(notes, dtype=np.float64)
            table[:, 0] = to_seconds(table[:, 0])
            table[:, 1] = to_seconds(table[:, 1])
            voices.append(table)
    return voices


def _tempo_map(tracks: list[Any], ticks_per_beat: int) -> Callable[[Notes], Notes]:
    """Ticks → seconds, following the set_tempo events of every track (120 bpm until the first)."""
    changes: dict[int, int] = {0: 500_000}
    for track in tracks:
        tick = 0
        for message in track:
            tick += int(message.time)
            if message.type == "set_tempo":
                changes[tick] = int(message.tempo)
    ticks = np.array(sorted(changes), dtype=np.float64)
    seconds_per_tick = np.array([changes[int(t)] for t in ticks]) / 1e6 / ticks_per_beat
    starts = np.concatenate(([0.0], np.cumsum(np.diff(ticks) * seconds_per_tick[:-1])))

    def to_seconds(at: Notes) -> Notes:
        segment = np.searchsorted(ticks, at, side="right") - 1
        return starts[segment] + (at - ticks[segment]) * seconds_per_tick[segment]

    return to_seconds


def _pitch_name(pitch: int) -> str:
    return f"{PITCH_NAMES[pitch % 12]}{pitch // 12 - 1}"


def _pianoroll_figure(voices: list[Notes]) -> Figure:
    """A figure sized to the music: wider for longer tunes, taller for wider ranges, capped."""
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    end = max((float(notes[:, 1].max()) for notes in voices), default=1.0)
    pitches = sorted({int(p) for notes in voices for p in notes[:, 2]})
    low, high = (pitches[0], pitches[-1]) if pitches else (60, 72)
    width = min(max(6.0, 1.5 + 0.35 * end), 16.0)
    height = min(max(2.5, 1.2 + 0.1 * (high - low + 3)), 6.0)
    figure = Figure(figsize=(width, height), layout="constrained")
    axes = figure.add_subplot()
    colours = [f"C{index % 10}" for index in range(len(voices))]
    for notes, colour in zip(voices, colours, strict=True):
        starts, ends, keys = notes[:, 0], notes[:, 1], notes[:, 2]
        boxes = np.stack([
            np.column_stack([starts, keys - 0.4]), np.column_stack([ends, keys - 0.4]),
            np.column_stack([ends, keys + 0.4]), np.column_stack([starts, keys + 0.4]),
        ], axis=1)
        axes.add_collection(PolyCollection(
            list(boxes), facecolors=colour, edgecolors="black", linewidths=0.3))
    axes.set_xlim(0, end * 1.01)
    axes.set_ylim(low - 1.5, high + 1.5)
    labelled = (pitches if len(pitches) <= MAX_LABELLED_PITCHES
                else [p for p in range(low, high + 1) if p % 12 == 0])
    axes.set_yticks(labelled, [_pitch_name(p) for p in labelled], fontsize=7)
    axes.tick_params(axis="x", labelsize=7)
    axes.set_xlabel("time (s)", fontsize=8)
    axes.grid(color="0.88", linewidth=0.5)
    axes.set_axisbelow(True)
    if not voices:
        axes.text(0.5, 0.5, "no notes", transform=axes.transAxes, ha="center", va="center")
    if len(voices) > 1:
        figure.legend(
            handles=[Patch(color=c, label=f"voice {n}") for n, c in enumerate(colours, start=1)],
            loc="outside right upper", fontsize=7, frameon=False,
        )
    return figure
