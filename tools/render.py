"""Render a checked tune to what people use: MIDI, WAV (and OGG/MP3), an SVG score, a piano roll.

Every renderer runs its program in a temporary folder, without a shell, under the timeout and
file-size limit from the settings, on ABC that passed the directive filter (`abc_directives`),
and checks what came out before it is moved into place atomically: a WAV the `wave` module can
read, an SVG that parses as XML, holds no active content and is written anew from its tree, a
PNG.
`render_all` turns a renderer that cannot run (a program or SoundFont not installed) into one
line of `RenderReport.problems` while the others still run.
"""

from __future__ import annotations

import io
import logging
import re
import tempfile
import wave
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field

from img2music.settings import Settings, get_settings
from img2music.tools.abc_directives import filter_directives
from img2music.tools.check import compile_abc
from img2music.tools.files import move_atomic, write_atomic
from img2music.tools.programs import (
    ProgramFailed,
    ProgramMissing,
    ProgramResult,
    run_program,
    which,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

AudioFormat = Literal["ogg", "mp3"]

# FluidSynth's default gain (0.2) leaves a single melody near -40 dBFS; 0.5 is audible without
# clipping the few voices an ABC tune has.
FLUIDSYNTH_GAIN = 0.5
SOUNDFONT_PACKAGES = "fluid-soundfont-gm or timgm6mb-soundfont"

SOX_FORMAT_PACKAGES: dict[AudioFormat, str] = {"ogg": "libsox-fmt-base", "mp3": "libsox-fmt-mp3"}

SVG_NS = "http://www.w3.org/2000/svg"
XLINK_NS = "http://www.w3.org/1999/xlink"
SVG_NAMESPACE = f"{{{SVG_NS}}}"
# Static drawing only: no script, foreignObject, animation or embedded documents.
SAFE_SVG_ELEMENTS = frozenset({
    "svg", "g", "defs", "use", "symbol", "path", "text", "tspan", "title", "desc", "style",
    "rect", "circle", "ellipse", "line", "polyline", "polygon", "clipPath", "mask", "pattern",
    "marker", "linearGradient", "radialGradient", "stop", "metadata",
})
ET.register_namespace("", SVG_NS)
ET.register_namespace("xlink", XLINK_NS)
EXTERNAL_REFERENCE = re.compile(r"@import|url\(\s*['\"]?(?!#)|javascript:|expression\(", re.I)

Notes = npt.NDArray[np.float64]  # one row per note: start (s), end (s), MIDI pitch
PNG_DPI = 100
PITCH_NAMES = ("C", "C♯", "D", "E♭", "E", "F", "F♯", "G", "A♭", "A", "B♭", "B")
MAX_LABELLED_PITCHES = 24


class RenderError(RuntimeError):
    """A renderer ran but its result is unusable, or something it needs is missing."""


class RenderReport(BaseModel):
    """What `render_all` wrote, and why anything asked for is missing."""

    files: dict[str, Path] = Field(
        default_factory=dict, description="Kind (midi, wav, ogg, mp3, svg, png) → written file."
    )
    problems: list[str] = Field(
        default_factory=list, description="One line per renderer that could not run."
    )


def render_wav(midi: bytes, out: Path, *, settings: Settings | None = None) -> Path:
    """Synthesize `midi` with FluidSynth and a General MIDI SoundFont into the WAV file `out`."""
    settings = settings or get_settings()
    _check_size("MIDI", len(midi), settings.max_midi_bytes)
    if which("fluidsynth") is None:
        raise ProgramMissing("fluidsynth")
    soundfont = _soundfont(settings)
    with tempfile.TemporaryDirectory(prefix="img2music-wav-") as work:
        folder = Path(work)
        (folder / "tune.mid").write_bytes(midi)
        result = run_program(
            [
                "fluidsynth", "-n", "-i", "-q", "-T", "wav", "-F", "tune.wav",
                "-r", str(settings.sample_rate), "-g", str(FLUIDSYNTH_GAIN),
                str(soundfont.resolve()), "tune.mid",
            ],
            cwd=folder, timeout_s=settings.program_timeout_s,
            max_file_bytes=settings.max_output_bytes,
        )
        wav = folder / "tune.wav"
        _check_ran("fluidsynth", result, wav)
        _check_wav(wav, settings.sample_rate)
        return move_atomic(wav, out)


def convert_audio(
    wav: Path, fmt: AudioFormat, out: Path | None = None, *, settings: Settings | None = None
) -> Path:
    """Encode `wav` as OGG Vorbis or MP3 with sox."""
    settings = settings or get_settings()
    out = out or wav.with_suffix(f".{fmt}")
    if not wav.is_file():
        raise RenderError(f"there is no WAV file at {wav}")
    with tempfile.TemporaryDirectory(prefix="img2music-audio-") as work:
        folder = Path(work)
        (folder / "in.wav").symlink_to(wav.resolve())
        encoded = folder / f"out.{fmt}"
        if not which("sox"):
            raise RenderError(
                f"sox is not installed (Debian packages: sox and {SOX_FORMAT_PACKAGES[fmt]})"
            )
        result = run_program(["sox", "in.wav", encoded.name], cwd=folder,
                             timeout_s=settings.program_timeout_s,
                             max_file_bytes=settings.max_output_bytes)
        if "no handler for file extension" in result.stderr:
            raise RenderError(
                f"sox cannot write {fmt} files (Debian package: {SOX_FORMAT_PACKAGES[fmt]})"
            )
        _check_ran("sox", result, encoded)
        _check_audio_signature(encoded, fmt, "sox")
        return move_atomic(encoded, out)


def render_svg(abc: str, out: Path, *, settings: Settings | None = None) -> Path:
    """Engrave the first tune of `abc` with abcm2ps as one SVG page, checked to be static SVG."""
    settings = settings or get_settings()
    _check_size("ABC text", len(abc.encode("utf-8")), settings.max_abc_bytes)
    with tempfile.TemporaryDirectory(prefix="img2music-svg-") as work:
        folder = Path(work)
        (folder / "tune.abc").write_text(filter_directives(abc).text, encoding="utf-8")
        # -g writes one SVG per tune, named from -O with a 3-digit tune count: score001.svg, …;
        # -S is abcm2ps's own secure mode (no %%format, %%EPS, %%beginps, %%postscript), kept
        # as a second line of defence behind the filter.
        result = run_program(
            ["abcm2ps", "-q", "-S", "-g", "-O", "score", "tune.abc"],
            cwd=folder, timeout_s=settings.program_timeout_s,
            max_file_bytes=settings.max_output_bytes,
        )
        svg = folder / "score001.svg"
        # abcm2ps exits with 1 after reporting errors in the music, yet still engraves the rest.
        _check_ran("abcm2ps", result, svg, tolerated_status=1)
        return write_atomic(out, clean_svg(svg.read_bytes()))


def render_pianoroll(midi: bytes, out: Path, *, settings: Settings | None = None) -> Path:
    """Draw `midi` as a piano roll PNG that a listener can follow while the tune plays.

    Seconds run across (as in the audio), pitch names up, and each voice (MIDI track) has its
    own colour.
    """
    settings = settings or get_settings()
    _check_size("MIDI", len(midi), settings.max_midi_bytes)
    voices = _read_notes(midi)
    figure = _pianoroll_figure(voices)
    with tempfile.TemporaryDirectory(prefix="img2music-png-") as work:
        png = Path(work) / "pianoroll.png"
        figure.savefig(png, format="png", dpi=PNG_DPI)
        return move_atomic(png, out)


def render_all(
    abc: str,
    out_dir: Path,
    *,
    midi: bool = True,
    wav: bool = True,
    svg: bool = True,
    png: bool = True,
    audio_formats: Sequence[AudioFormat] = (),
    settings: Settings | None = None,
) -> RenderReport:
    """Check `abc` and write `tune.mid`, `tune.wav`, `score.svg`, `pianoroll.png` (as asked) and
    `tune.<fmt>` for each audio format into `out_dir`.

    Raises ValueError when the tune is not valid ABC; a renderer that cannot run is reported in
    `problems` instead. OGG and MP3 are encoded from the WAV, which is removed again when
    `wav` is False.
    """
    settings = settings or get_settings()
    compiled = compile_abc(abc, settings=settings)
    if not compiled.check.ok or compiled.midi is None:
        first = compiled.check.errors[0].one_line() if compiled.check.errors else "no tune found"
        raise ValueError(f"the ABC is not a valid tune: {first}")
    tune_midi = compiled.midi
    out_dir.mkdir(parents=True, exist_ok=True)
    report = RenderReport()
    if midi:
        report.files["midi"] = write_atomic(out_dir / "tune.mid", tune_midi)
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
            render_svg, compiled.abc, out_dir / "score.svg", settings=settings))
    if png:
        _attempt(report, "png", partial(
            render_pianoroll, tune_midi, out_dir / "pianoroll.png", settings=settings))
    return report


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


def _check_size(what: str, size: int, limit: int) -> None:
    if size > limit:
        raise RenderError(f"the {what} is {size:,} bytes, over the {limit:,}-byte limit")


def _soundfont(settings: Settings) -> Path:
    soundfont = settings.find_soundfont()
    if soundfont is not None:
        return soundfont
    if settings.soundfont is not None:
        raise RenderError(
            f"the SoundFont {settings.soundfont} (IMG2MUSIC_SOUNDFONT) does not exist"
        )
    raise RenderError(
        f"no General MIDI SoundFont found (Debian package: {SOUNDFONT_PACKAGES}), "
        "or set IMG2MUSIC_SOUNDFONT to an .sf2 file"
    )


def _check_ran(
    program: str, result: ProgramResult, output: Path, *, tolerated_status: int = 0
) -> None:
    """A failed exit or a missing or empty output file is a failure, told with its last word."""
    said = _last_word(result)
    if result.returncode == tolerated_status != 0:
        logger.warning("%s reported errors: %s", program, said)
    elif result.returncode != 0:
        how = (f"was killed by signal {-result.returncode}" if result.returncode < 0
               else f"exited with status {result.returncode}")
        raise ProgramFailed(f"{program} {how}" + (f": {said}" if said else ""))
    if not output.is_file() or output.stat().st_size == 0:
        raise RenderError(f"{program} wrote no {output.suffix[1:].upper()} file"
                          + (f": {said}" if said else ""))


def _last_word(result: ProgramResult) -> str:
    """The last error line a program wrote, or else its last line."""
    lines = [line.strip() for line in (result.stdout + "\n" + result.stderr).splitlines()]
    lines = [line for line in lines if line]
    errors = [line for line in lines if re.search(r"error|fail", line, re.I)]
    return (errors or lines or [""])[-1][:200]


def _check_wav(path: Path, sample_rate: int) -> None:
    try:
        with wave.open(str(path), "rb") as audio:
            frames, rate = audio.getnframes(), audio.getframerate()
    except (wave.Error, EOFError) as error:
        raise RenderError(f"fluidsynth wrote a WAV that cannot be read: {error}") from error
    if frames == 0:
        raise RenderError("fluidsynth wrote a WAV without sound frames")
    if rate != sample_rate:
        raise RenderError(f"fluidsynth wrote {rate} Hz audio, not the {sample_rate} Hz asked for")


def _check_audio_signature(path: Path, fmt: AudioFormat, program: str) -> None:
    with path.open("rb") as handle:
        head = handle.read(4)
    if fmt == "ogg":
        ok = head == b"OggS"
    else:  # an ID3 tag, or straight into an MPEG frame (11 sync bits)
        ok = head[:3] == b"ID3" or (len(head) == 4 and head[0] == 0xFF and head[1] >= 0xE0)
    if not ok:
        raise RenderError(f"{program} wrote a file that is not {fmt.upper()}")


def clean_svg(svg: bytes) -> bytes:
    """The score as browsers will see it: well-formed, static SVG, written anew from its tree.

    abcm2ps copies some values into the SVG as written, so a tune can smuggle in markup; the
    directive filter removes the directives known to do so, and this is the second line: an
    element or attribute beyond drawing and local references, or a processing instruction
    (abcm2ps writes none; one inside `<style>` was how a `%%musicfont` value broke out into
    HTML), refuses the score. Comments, the doctype and CDATA sections are dropped, since the
    returned SVG is serialised from the checked tree, never copied from the program's bytes.
    """
    builder = ET.TreeBuilder(insert_comments=False, insert_pis=True)
    try:
        root = ET.fromstring(svg, parser=ET.XMLParser(target=builder))
    except ET.ParseError as error:
        raise RenderError(f"abcm2ps wrote an SVG that is not well-formed XML: {error}") from error
    if root.tag not in (f"{SVG_NAMESPACE}svg", "svg"):
        raise RenderError(f"abcm2ps wrote <{root.tag}>, not an SVG document")
    for element in root.iter():
        if not isinstance(element.tag, str):  # comments are not kept: a processing instruction
            raise RenderError("the score holds a processing instruction; refused as markup "
                              "smuggled in")
        name = str(element.tag).removeprefix(SVG_NAMESPACE)
        if name not in SAFE_SVG_ELEMENTS:
            raise RenderError(f"the score holds a <{name}> element; refused as active content")
        for attribute, value in element.attrib.items():
            local = attribute.rpartition("}")[2].lower()
            if local.startswith("on") or (local == "href" and not value.startswith("#")):
                raise RenderError(f"the score holds a {local}= attribute; refused as active "
                                  "content")
            if EXTERNAL_REFERENCE.search(value):
                raise RenderError("the score refers to outside content; refused")
        if name == "style" and EXTERNAL_REFERENCE.search(element.text or ""):
            raise RenderError("the score's style sheet refers to outside content; refused")
    body = ET.tostring(root, encoding="utf-8", xml_declaration=False)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + bytes(body)


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
