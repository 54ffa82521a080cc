"""The MIDI a sequencer or a DAW opens: a conductor track (tempo, meter, key, title), then one
track per voice, named after the voice, on a channel of its own, starting with its program.

abc2midi already writes a track per voice; this names each track after its voice (abc2midi
gives the first the tune's title and the others nothing), puts the General MIDI program the
voice plays with at its start (abc2midi sets it a tick in, and a voice without a `%%MIDI program`
plays whatever another voice on its channel chose), and moves a voice that shares a channel with
an earlier one to a free channel, so that re-voicing or muting one track touches no other. A
one-voice tune, which abc2midi writes as a single track, is split into conductor and voice.
The notes and their timing are abc2midi's, unchanged.

abc2midi labels its tracks with a text event ("note track" for a voice; drum, drone and chord
tracks otherwise): where the labels are there, only note tracks are voices, and the others keep
their place, named by their label. MIDI from music21 (the checker's other backend) has no labels:
every track with notes or programs is a voice.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import mido

from img2music.tools.abc.convert import DRUM_CHANNEL

VOICE_LABEL = "note track"
MIDI_CHANNELS = 16
DEFAULT_PROGRAM = 0  # General MIDI's acoustic grand piano, what a player uses when none is set


@dataclass(frozen=True)
class VoiceTracks:
    """The arranged MIDI, and the program each voice plays with, in the order of the voices."""

    midi: bytes
    programs: list[int]


def voice_tracks(midi: bytes, names: Sequence[str]) -> VoiceTracks:
    """`midi` (as abc2midi or music21 wrote it) with a conductor track and one named track per
    voice; `names` are the voices' names in order (`tools.abc.voices`). When the file has not
    as many voice tracks as names, tracks are named "Voice 1", "Voice 2"…"""
    song = mido.MidiFile(file=io.BytesIO(midi))
    conductor, tracks = _conductor_and_tracks(song)
    labelled = any(_label(track) is not None for track in tracks)
    voices = [track for track in tracks if _label(track) in (None, VOICE_LABEL) or not labelled]
    if len(voices) != len(names):
        names = [f"Voice {number}" for number in range(1, len(voices) + 1)]
    voice_names = {id(track): name for track, name in zip(voices, names, strict=True)}
    arranged = mido.MidiFile(type=1, ticks_per_beat=song.ticks_per_beat)
    arranged.tracks.append(conductor)
    programs: list[int] = []
    taken: set[int] = set()
    for track in tracks:
        channel = _free_channel(_channel(track), taken)
        taken.add(channel)
        name = voice_names.get(id(track)) or (_label(track) or "").capitalize()
        program = _program(track, tracks)
        if id(track) in voice_names:
            programs.append(program)
        arranged.tracks.append(_rewritten(track, name=name, channel=channel, program=program))
    buffer = io.BytesIO()
    arranged.save(file=buffer)
    return VoiceTracks(midi=buffer.getvalue(), programs=programs)


def _conductor_and_tracks(song: mido.MidiFile) -> tuple[mido.MidiTrack, list[mido.MidiTrack]]:
    """The first track's meta events as the conductor track; the other tracks, and the first
    track's channel events as a track of their own when it has any (a one-voice file)."""
    first, *rest = song.tracks or [mido.MidiTrack()]
    conductor = _kept(first, lambda message: message.is_meta and message.type != "lyrics")
    played = _kept(first, lambda message: not message.is_meta or message.type == "lyrics")
    has_music = any(not message.is_meta for message in played)
    return conductor, ([played] if has_music else []) + list(rest)


def _kept(track: mido.MidiTrack, keep: Callable[[Any], bool]) -> mido.MidiTrack:
    """The events of `track` that `keep` accepts, at the same absolute times."""
    kept, carried = mido.MidiTrack(), 0
    for message in track:
        carried += message.time
        if message.type != "end_of_track" and keep(message):
            kept.append(message.copy(time=carried))
            carried = 0
    kept.append(mido.MetaMessage("end_of_track", time=carried))
    return kept


def _label(track: mido.MidiTrack) -> str | None:
    """abc2midi's label of the track ("note track", "drum track"…), if it has one."""
    return next((message.text for message in track
                 if message.type == "text" and message.text.endswith(" track")), None)


def _channel(track: mido.MidiTrack) -> int:
    return next((message.channel for message in track if hasattr(message, "channel")), 0)


def _free_channel(channel: int, taken: set[int]) -> int:
    """The track's own channel, or the first free one (never the drum channel) when an earlier
    track has it; the drum channel stays the drums'."""
    if channel not in taken or channel == DRUM_CHANNEL:
        return channel
    free = [n for n in range(MIDI_CHANNELS) if n not in taken and n != DRUM_CHANNEL]
    return free[0] if free else channel


def _program(track: mido.MidiTrack, tracks: Sequence[mido.MidiTrack]) -> int:
    """The program the track's first note plays with: its own program change before that note,
    or else the first one any track sets on its channel, or else the default."""
    for message in track:
        if message.type == "program_change":
            return int(message.program)
        if message.type == "note_on":
            break
    channel = _channel(track)
    return next((int(message.program) for other in tracks for message in other
                 if message.type == "program_change" and message.channel == channel),
                DEFAULT_PROGRAM)


def _rewritten(track: mido.MidiTrack, *, name: str, channel: int, program: int) -> mido.MidiTrack:
    """The track named `name`, its events moved to `channel`, its program set at time 0."""
    events = _kept(track, lambda message: message.type != "track_name")
    return mido.MidiTrack([
        mido.MetaMessage("track_name", name=name, time=0),
        mido.Message("program_change", channel=channel, program=program, time=0),
        *(message.copy(channel=channel) if hasattr(message, "channel") else message
          for message in events),
    ])
