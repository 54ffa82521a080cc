"""Audio: FluidSynth plays the MIDI through a General MIDI SoundFont into a WAV, and sox encodes
it as Ogg Vorbis or MP3; each result is checked before it is moved into place."""

from __future__ import annotations

import tempfile
import wave
from pathlib import Path
from typing import Literal

from img2music.settings import Settings, get_settings
from img2music.tools.files import move_atomic
from img2music.tools.programs import ProgramMissing, run_program, which
from img2music.tools.render.checks import RenderError, check_ran, check_size

AudioFormat = Literal["ogg", "mp3"]

# FluidSynth's default gain (0.2) leaves a single melody near -40 dBFS; 0.5 is audible without
# clipping the few voices an ABC tune has.
FLUIDSYNTH_GAIN = 0.5
SOUNDFONT_PACKAGES = "fluid-soundfont-gm or timgm6mb-soundfont"

SOX_FORMAT_PACKAGES: dict[AudioFormat, str] = {"ogg": "libsox-fmt-base", "mp3": "libsox-fmt-mp3"}


def render_wav(midi: bytes, out: Path, *, settings: Settings | None = None) -> Path:
    """Synthesize `midi` with FluidSynth and a General MIDI SoundFont into the WAV file `out`."""
    settings = settings or get_settings()
    check_size("MIDI", len(midi), settings.max_midi_bytes)
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
        check_ran("fluidsynth", result, wav)
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
        check_ran("sox", result, encoded)
        _check_audio_signature(encoded, fmt, "sox")
        return move_atomic(encoded, out)


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
