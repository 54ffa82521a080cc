"""Render a checked tune to what people use: MIDI, WAV (and OGG/MP3), an SVG score, a piano roll,
and MusicXML for notation programs.

The MIDI has a track per voice, named after it, with its program (`midi`), so that a DAW opens it
ready to edit. Every renderer that runs a program (`audio`, `score`) runs it in a temporary
folder, without a shell, under the timeout and file-size limit from the settings; every renderer
reads ABC that passed the directive filter (`tools.abc.directives`), and what came out is checked
before it is moved into place atomically: a WAV the `wave` module can read, an SVG that parses as
XML, holds no active content and is written anew from its tree, a PNG, MusicXML from music21
(`musicxml`, in this process). `render_all` turns a renderer that cannot run (a program or
SoundFont not installed, music21 failing on a tune) into one line of `RenderReport.problems` while
the others still run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

from pydantic import BaseModel, Field

from img2music.settings import Settings, get_settings
from img2music.tools.abc.check import compile_abc
from img2music.tools.abc.directives import filter_directives
from img2music.tools.abc.voices import split_voices
from img2music.tools.files import write_atomic
from img2music.tools.programs import ProgramFailed, ProgramMissing
from img2music.tools.render.audio import AudioFormat, convert_audio, render_wav
from img2music.tools.render.checks import RenderError
from img2music.tools.render.midi import VoiceTracks, voice_tracks
from img2music.tools.render.musicxml import render_musicxml
from img2music.tools.render.pianoroll import render_pianoroll
from img2music.tools.render.score import render_svg

logger = logging.getLogger(__name__)


class RenderReport(BaseModel):
    """What `render_all` wrote, and why anything asked for is missing."""

    files: dict[str, Path] = Field(
        default_factory=dict,
        description="Kind (midi, wav, ogg, mp3, svg, png, musicxml) → written file."
    )
    problems: list[str] = Field(
        default_factory=list, description="One line per renderer that could not run."
    )


def render_all(
    abc: str,
    out_dir: Path,
    *,
    midi: bool = True,
    wav: bool = True,
    svg: bool = True,
    png: bool = True,
    musicxml: bool = False,
    audio_formats: Sequence[AudioFormat] = (),
    settings: Settings | None = None,
    checked_midi: bytes | None = None,
) -> RenderReport:
    """Check `abc` and write `tune.mid`, `tune.wav`, `score.svg`, `pianoroll.png`,
    `tune.musicxml` (as asked) and `tune.<fmt>` for each audio format into `out_dir`.

    Raises ValueError when the tune is not valid ABC; a renderer that cannot run is reported in
    `problems` instead. OGG and MP3 are encoded from the WAV, which is removed again when
    `wav` is False. `checked_midi` is the MIDI a check of this very ABC compiled (the graph's
    parse-check): the tune is then not compiled again.
    """
    settings = settings or get_settings()
    if checked_midi is None:
        compiled = compile_abc(abc, settings=settings)
        if not compiled.check.ok or compiled.midi is None:
            first = (compiled.check.errors[0].one_line() if compiled.check.errors
                     else "no tune found")
            raise ValueError(f"the ABC is not a valid tune: {first}")
        abc, checked_midi = compiled.abc, compiled.midi
    else:
        # What the check compiled was the filtered text; the readers below get the same.
        abc = filter_directives(abc).text
    tune_midi = checked_midi
    out_dir.mkdir(parents=True, exist_ok=True)
    report = RenderReport()
    tracks = _voice_tracks(abc, tune_midi, report)
    if midi:
        report.files["midi"] = write_atomic(out_dir / "tune.mid", tracks.midi)
    if wav or audio_formats:
        wav_path = _attempt(report, "wav", partial(
            render_wav, tune_midi, out_dir / "tune.wav", settings=settings))
        for fmt in dict.fromkeys(audio_formats):
            if wav_path is None:
                report.problems.append(f"{fmt}: not encoded, there is no WAV to encode")
                continue
            _attempt(report, fmt, partial(
                convert_audio, wav_path, fmt, out_dir / f"tune.{fmt}", settings=settings))
        if not wav and wav_path is not None:
            wav_path.unlink()
            del report.files["wav"]
    if svg:
        _attempt(report, "svg", partial(
            render_svg, abc, out_dir / "score.svg", settings=settings))
    if png:
        _attempt(report, "png", partial(
            render_pianoroll, tune_midi, out_dir / "pianoroll.png", settings=settings))
    if musicxml:
        _attempt(report, "musicxml", partial(
            render_musicxml, abc, out_dir / "tune.musicxml", programs=tracks.programs,
            settings=settings))
    return report


def _voice_tracks(abc: str, midi: bytes, report: RenderReport) -> VoiceTracks:
    """The MIDI with a named track per voice; abc2midi's own, with a problem said, when it
    cannot be arranged (the music is the same, the tracks are not named)."""
    try:
        return voice_tracks(midi, [voice.name for voice in split_voices(abc)])
    except Exception as error:  # mido raises many exception types on a file it cannot read
        logger.warning("the MIDI's tracks were not arranged per voice: %s", error)
        report.problems.append(f"midi: written as abc2midi wrote it, its tracks not named per "
                               f"voice ({type(error).__name__}: {error})")
        return VoiceTracks(midi=midi, programs=[])


def _attempt(report: RenderReport, kind: str, render: Callable[[], Path]) -> Path | None:
    try:
        path = render()
    except (ProgramMissing, ProgramFailed, RenderError) as error:
        logger.warning("%s not rendered: %s", kind, error)
        report.problems.append(f"{kind}: {error}")
        return None
    logger.info("%s written to %s", kind, path)
    report.files[kind] = path
    return path
