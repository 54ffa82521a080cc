"""Rendering with the real programs: the WAV sounds and lasts as long as the notes, the score
is static SVG with the title, the piano roll is a PNG, a missing program costs only its file."""

from __future__ import annotations

import io
import re
import shutil
import struct
import wave
import xml.etree.ElementTree as ET
from pathlib import Path

import mido
import numpy as np
import numpy.typing as npt
import pytest
from matplotlib.image import imread
from music21 import corpus

from img2music.settings import Settings
from img2music.tools.check import compile_abc
from img2music.tools.programs import DEBIAN_PACKAGES, ProgramMissing
from img2music.tools.render import (
    AudioFormat,
    RenderError,
    clean_svg,
    convert_audio,
    render_all,
    render_pianoroll,
    render_svg,
    render_wav,
)
from tests.needs import needs_programs as requires
from tests.needs import needs_soundfont as requires_soundfont

# 8 quarter notes at 120 quarter notes a minute: 4.0 s of notes.
SMALL = "X:1\nT:Scale of C\nM:4/4\nL:1/4\nQ:1/4=120\nK:C\nCDEF|GABc|]\n"
SMALL_SECONDS = 4.0
TWO_VOICES = """X:2
T:Two voices
M:4/4
L:1/4
Q:1/4=120
K:C
V:1
cdef|gabc'|]
V:2 clef=bass
C,D,E,F,|G,A,B,C|]
"""
# FluidSynth (2.2 and later) renders on after the last note until every voice has finished its
# release, then 2 s more for the reverb (FLUID_PLAYER_STOP_GRACE_MS); the piano's release in the
# Debian SoundFonts is under 1.5 s (measured 2.6–3.0 s of tail in all). Older FluidSynth stops
# at the last event, hence the small allowance below the notes' length for MIDI tick rounding.
MAX_TAIL_S = 4.0
EARLY_END_S = 0.05
# Silence from FluidSynth is exact zeros and its reverb tail stays near 3e-5 RMS; one melody at
# our gain is about 0.02 RMS, so 1e-3 (-60 dBFS) separates sound from silence with room to spare.
MIN_RMS = 1e-3
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def corpus_abc() -> str:
    """The essen folk-song collection, 313 tunes, as the Latin-1 file music21 ships."""
    return Path(str(corpus.getWork("essenFolksong/altdeu10.abc"))).read_text(encoding="latin-1")


def first_tune(abc: str) -> str:
    starts = [match.start() for match in re.finditer(r"^X:", abc, flags=re.M)]
    return abc[starts[0]:starts[1]]


def midi_of(abc: str) -> bytes:
    compiled = compile_abc(abc)
    assert compiled.midi is not None, compiled.check.feedback()
    return compiled.midi


def read_wav(path: Path) -> tuple[npt.NDArray[np.float64], int]:
    """Samples as floats in [-1, 1], one column per channel, and the sample rate."""
    with wave.open(str(path), "rb") as audio:
        assert audio.getsampwidth() == 2
        frames = audio.readframes(audio.getnframes())
        channels, rate = audio.getnchannels(), audio.getframerate()
    samples = np.frombuffer(frames, dtype="<i2").reshape(-1, channels) / 32768.0
    return samples, rate


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def only_programs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *programs: str) -> None:
    """PATH holds links to these real programs and nothing else."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for program in programs:
        found = shutil.which(program)
        if found is not None:
            (folder / program).symlink_to(found)
    monkeypatch.setenv("PATH", str(folder))


def svg_root(path: Path) -> ET.Element:
    root = ET.parse(path).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return root


@requires("fluidsynth")
@requires_soundfont
def test_wav_of_a_small_tune_sounds_for_its_length_at_the_rate_asked(tmp_path: Path) -> None:
    settings = Settings(sample_rate=22_050)
    out = render_wav(midi_of(SMALL), tmp_path / "small.wav", settings=settings)
    samples, rate = read_wav(out)
    assert rate == 22_050
    seconds = len(samples) / rate
    assert SMALL_SECONDS - EARLY_END_S <= seconds <= SMALL_SECONDS + MAX_TAIL_S
    notes = samples[: int(SMALL_SECONDS * rate)]
    assert np.sqrt(np.mean(notes**2)) > MIN_RMS
    loudness = np.abs(samples).max(axis=1)
    audible = np.flatnonzero(loudness > 0.01 * loudness.max()) / rate
    assert audible[0] < 0.1  # the first note starts at once
    assert SMALL_SECONDS - 0.5 < audible[-1] < SMALL_SECONDS + 1.5  # the last one ends on time


@requires("fluidsynth")
@requires_soundfont
def test_wav_of_a_corpus_tune_lasts_as_long_as_its_midi(corpus_abc: str, tmp_path: Path) -> None:
    midi = midi_of(first_tune(corpus_abc))
    length = mido.MidiFile(file=io.BytesIO(midi)).length
    samples, rate = read_wav(render_wav(midi, tmp_path / "hildebrand.wav"))
    assert rate == Settings().sample_rate
    assert length - EARLY_END_S <= len(samples) / rate <= length + MAX_TAIL_S
    assert np.sqrt(np.mean(samples**2)) > MIN_RMS


@requires("fluidsynth")
def test_a_missing_soundfont_names_the_setting(tmp_path: Path) -> None:
    settings = Settings(soundfont=tmp_path / "none.sf2")
    with pytest.raises(RenderError, match="IMG2MUSIC_SOUNDFONT"):
        render_wav(midi_of(SMALL), tmp_path / "x.wav", settings=settings)


def test_missing_fluidsynth_names_its_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    midi = midi_of(SMALL)
    only_programs(tmp_path, monkeypatch)
    with pytest.raises(ProgramMissing, match=r"Debian package: fluidsynth"):
        render_wav(midi, tmp_path / "x.wav")


@requires("abcm2ps")
def test_svg_is_the_first_tune_with_its_title(corpus_abc: str, tmp_path: Path) -> None:
    out = render_svg(corpus_abc, tmp_path / "score.svg")
    text = " ".join(svg_root(out).itertext())
    assert "Das Hildebrandslied" in text
    assert "Herzog Ernst" not in text  # the second tune has a file of its own, not kept


@requires("abcm2ps")
def test_svg_of_a_small_tune(tmp_path: Path) -> None:
    root = svg_root(render_svg(SMALL, tmp_path / "score.svg"))
    assert "Scale of C" in " ".join(root.itertext())
    assert float(root.attrib["width"].removesuffix("px")) > 100


# Each of these, unfiltered, puts the secret file's text into the score (checked by hand against
# abcm2ps 8.14): includes read the file as ABC, EPS draws it; `\\` joins lines in ABC 2.0.
FILE_READERS = {
    "%%abc-include": "CDEF|GABc|]\n%%abc-include {abc}\n",
    "I:abc-include": "CDEF|GABc|]\nI: abc-include {abc}\n",
    "%%abc I:abc-include": "CDEF|GABc|]\n%%abc I:abc-include {abc}\n",
    "%%format": "CDEF|GABc|]\n%%format {abc}\n",
    "%%EPS": "%%EPS {eps}\nCDEF|GABc|]\n",
    "%%EPS split by \\": "%%E\\\nPS {eps}\nCDEF|GABc|]\n",
    "[I:EPS]": "CD[I:EPS {eps}]EF|GABc|]\n",
}


@requires("abcm2ps")
@pytest.mark.parametrize("body", FILE_READERS.values(), ids=FILE_READERS.keys())
def test_svg_does_not_read_local_files(body: str, tmp_path: Path) -> None:
    secret_abc = tmp_path / "secret.abc"
    secret_abc.write_text("W:SECRET WORDS\n", encoding="utf-8")
    secret_eps = tmp_path / "secret.eps"
    secret_eps.write_text(
        "%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 20\n"
        "/Times-Roman findfont 12 scalefont setfont 10 5 moveto (SECRET EPS) show\n",
        encoding="ascii",
    )
    abc = "%abc-2.0\nX:1\nT:Innocent\nM:4/4\nL:1/4\nK:C\n" + body.format(
        abc=secret_abc, eps=secret_eps
    )
    text = render_svg(abc, tmp_path / "score.svg").read_text(encoding="utf-8")
    assert "Innocent" in text
    assert "SECRET" not in text


@requires("abcm2ps")
def test_markup_in_a_font_name_never_reaches_the_score(tmp_path: Path) -> None:
    # abcm2ps copies font names into style attributes unescaped: unfiltered, this closes the
    # attribute and yields well-formed SVG with a script in it. The directive filter removes it.
    abc = 'X:1\nT:Title\n%%titlefont Times"><script>alert(1)</script><g/>\nK:C\nC\n'
    text = render_svg(abc, tmp_path / "score.svg").read_text(encoding="utf-8")
    assert "Title" in text and "script" not in text and "alert" not in text


SVG_OPEN = '<svg xmlns="http://www.w3.org/2000/svg">'


@pytest.mark.parametrize(("svg", "reason"), [
    (f"{SVG_OPEN}<script>alert(1)</script></svg>", "<script> element"),
    (f'{SVG_OPEN}<g onload="alert(1)"/></svg>', "onload= attribute"),
    (f"{SVG_OPEN}<style>.a{{}}<?x ><img src=x onerror=alert(1)>?></style></svg>",
     "processing instruction"),
    (f'{SVG_OPEN}<use href="https://evil.example/x.svg#a"/></svg>', "href= attribute"),
    (f"{SVG_OPEN}<style>@import url(https://evil.example/a.css);</style></svg>",
     "outside content"),
    ("<html><body/></html>", "not an SVG"),
    (f"{SVG_OPEN}<g>", "not well-formed"),
])
def test_the_svg_check_refuses_anything_but_drawing(svg: str, reason: str) -> None:
    with pytest.raises(RenderError, match=reason):
        clean_svg(svg.encode())


def test_the_svg_is_written_anew_without_comments_doctype_or_cdata() -> None:
    svg = (b'<?xml version="1.0"?>\n<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" '
           b'"http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd">\n' + SVG_OPEN.encode()
           + b"<!-- title: <b> --><style><![CDATA[ .a{fill:red} </style><x> ]]></style>"
           b"<text>T</text></svg>")
    cleaned = clean_svg(svg).decode()
    assert "<!--" not in cleaned and "DOCTYPE" not in cleaned and "CDATA" not in cleaned
    assert "<x>" not in cleaned and "&lt;/style&gt;&lt;x&gt;" in cleaned
    root = ET.fromstring(cleaned)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert [element.tag.split("}")[1] for element in root] == ["style", "text"]


def test_pianoroll_is_a_png_of_sensible_size(tmp_path: Path) -> None:
    out = render_pianoroll(midi_of(SMALL), tmp_path / "roll.png")
    width, height = png_size(out)
    assert 400 <= width <= 1600 and 200 <= height <= 800
    pixels = imread(out)
    assert pixels.shape[:2] == (height, width)


def test_pianoroll_draws_each_voice_in_its_own_colour(tmp_path: Path) -> None:
    pixels = imread(render_pianoroll(midi_of(TWO_VOICES), tmp_path / "roll.png"))[:, :, :3]
    for colour in ("#1f77b4", "#ff7f0e"):  # matplotlib's first two cycle colours
        rgb = np.array([int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)])
        assert (np.abs(pixels - rgb).max(axis=2) < 0.02).sum() > 500, colour


@requires("abcm2ps")
@requires("fluidsynth")
@requires_soundfont
def test_render_all_writes_the_four_files(tmp_path: Path) -> None:
    report = render_all(SMALL, tmp_path / "out")
    assert report.problems == []
    assert report.files == {
        "midi": tmp_path / "out" / "tune.mid",
        "wav": tmp_path / "out" / "tune.wav",
        "svg": tmp_path / "out" / "score.svg",
        "png": tmp_path / "out" / "pianoroll.png",
    }
    assert report.files["midi"].read_bytes()[:4] == b"MThd"
    assert read_wav(report.files["wav"])[0].size > 0
    svg_root(report.files["svg"])
    png_size(report.files["png"])


def test_render_all_writes_only_what_is_asked(tmp_path: Path) -> None:
    report = render_all(SMALL, tmp_path, wav=False, svg=False)
    assert set(report.files) == {"midi", "png"}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["pianoroll.png", "tune.mid"]


def test_render_all_refuses_an_invalid_tune_with_its_first_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"not a valid tune: line 7, col 9: a chord opened"):
        render_all(SMALL.replace("GABc", "GAB[c"), tmp_path)
    assert not any(tmp_path.iterdir())
    faulty = render_all(SMALL.replace("GABc", "GAB(c"), tmp_path, wav=False, svg=False)
    assert set(faulty.files) == {"midi", "png"}  # an open slur is a fault: the tune plays


@pytest.mark.parametrize(
    ("missing", "present", "kind"),
    [
        pytest.param("fluidsynth", "abcm2ps", "wav", marks=requires("abcm2ps")),
        pytest.param("abcm2ps", "fluidsynth", "svg",
                     marks=[requires("fluidsynth"), requires_soundfont]),
    ],
)
def test_a_missing_program_is_a_problem_while_the_rest_renders(
    missing: str, present: str, kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    only_programs(tmp_path, monkeypatch, "abc2midi", present)
    report = render_all(SMALL, tmp_path / "out")
    package = DEBIAN_PACKAGES[missing]
    assert report.problems == [f"{kind}: {missing} is not installed (Debian package: {package})"]
    assert set(report.files) == {"midi", "wav", "svg", "png"} - {kind}
    for path in report.files.values():
        assert path.is_file() and path.stat().st_size > 0


@requires("fluidsynth")
@requires("sox")
@requires_soundfont
def test_audio_formats_come_from_a_wav_that_is_removed_unless_asked(tmp_path: Path) -> None:
    report = render_all(SMALL, tmp_path, wav=False, svg=False, png=False,
                        audio_formats=("ogg", "mp3"))
    assert report.problems == []
    assert sorted(path.name for path in tmp_path.iterdir()) == ["tune.mid", "tune.mp3", "tune.ogg"]


def test_audio_formats_without_a_wav_are_problems_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    only_programs(tmp_path, monkeypatch, "abc2midi")
    report = render_all(SMALL, tmp_path / "out", svg=False, png=False, audio_formats=("ogg",))
    assert report.problems == [
        "wav: fluidsynth is not installed (Debian package: fluidsynth)",
        "ogg: not encoded, there is no WAV to encode",
    ]
    assert set(report.files) == {"midi"}


@requires("fluidsynth")
@requires_soundfont
@requires("sox")
@pytest.mark.parametrize(("fmt", "signatures"), [("ogg", (b"OggS",)), ("mp3", (b"ID3", b"\xff"))])
def test_wav_converts_to_ogg_and_mp3(
    fmt: AudioFormat,
    signatures: tuple[bytes, ...],
    tmp_path: Path,
) -> None:
    wav = render_wav(midi_of(SMALL), tmp_path / "tune.wav")
    out = convert_audio(wav, fmt)
    assert out == tmp_path / f"tune.{fmt}"
    data = out.read_bytes()
    assert data.startswith(signatures) and 10_000 < len(data) < wav.stat().st_size


def test_conversion_without_sox_names_the_packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wav = tmp_path / "tune.wav"
    with wave.open(str(wav), "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(8_000)
        audio.writeframes(b"\0\0" * 800)
    only_programs(tmp_path, monkeypatch)
    with pytest.raises(RenderError, match=r"sox is not installed \(Debian packages: sox and "):
        convert_audio(wav, "mp3")
