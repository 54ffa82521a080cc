"""Parse-check on hand-written tunes: what a model writes, right and wrong, in two tiers:
errors (the tune cannot be played as meant) and faults (a musician would correct them)."""

from __future__ import annotations

import io

import mido
import pytest

from img2music.settings import Settings
from img2music.tools.abc.check import Backend, ParseCheck, check_abc, compile_abc, midi_seconds
from img2music.tools.abc.scan import is_music_line
from tests.needs import needs_programs

needs_abc2midi = needs_programs("abc2midi")
# Both backends, always: without abc2midi its cases skip (and fail under CI), never vanish.
BACKENDS = [pytest.param("abc2midi", marks=needs_abc2midi), "music21"]

GOOD = """X:1
T:Morning light
M:3/4
L:1/8
Q:1/4=96
K:G
D2 | G2 B2 d2 | (3efg f2 e2 | d4 B2 | A>B c2 A2 |
G2 B2 d2 | [ce]2 [df]2 [eg]2 | d2 c2 A2 | G4 |]
"""


def only_error(result: ParseCheck) -> str:
    assert not result.ok
    return result.errors[0].message


@pytest.mark.parametrize("backend", BACKENDS)
def test_good_tune_is_valid_with_its_shape(backend: Backend) -> None:
    compiled = compile_abc(GOOD, backend=backend)
    result = compiled.check
    assert result.ok, result.feedback()
    assert (result.tunes, result.voices, result.bars) == (1, 1, 9)
    assert result.notes == 28
    assert result.duration_beats == pytest.approx(1 + 7 * 3 + 2)  # pickup, 7 bars, short last
    assert result.backend == backend
    assert compiled.midi is not None and compiled.midi.startswith(b"MThd")


@pytest.mark.parametrize("backend", BACKENDS)
def test_pickup_and_repeat_side_bars_may_be_short(backend: Backend) -> None:
    tune = """X:2
T:Jig
M:6/8
L:1/8
K:D
A |: d2 e f2 g | a3 f2 :: e | d2 B A2 F | D3 D2 :|
"""
    assert check_abc(tune, backend=backend).ok


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_short_bar_in_the_middle_is_a_fault_pointing_at_it(backend: Backend) -> None:
    tune = GOOD.replace("d4 B2 |", "d4 |")
    compiled = compile_abc(tune, backend=backend)
    result = compiled.check
    assert result.ok and not result.clean and compiled.midi is not None  # it still plays
    fault = result.faults[0]
    assert (fault.severity, fault.line, fault.col) == ("fault", 7, 31)
    assert "bar 4 lasts 4/8 but M:3/4 bars last 6/8 (2/8 short" in fault.message


@needs_abc2midi  # music21, the fallback, cannot read the tune at all
def test_a_long_bar_is_a_fault_and_its_feedback_reads_in_one_line() -> None:
    tune = GOOD.replace("A>B c2 A2", "A>B c2 A2 B")
    result = check_abc(tune)
    assert result.ok and result.fault_count == 1
    assert result.faults[0].line == 7
    assert "bar 5 lasts 7/8 but M:3/4 bars last 6/8 (1/8 too long)" in result.faults[0].message
    feedback = result.feedback()
    assert feedback.startswith("line 7, col 39: bar 5 lasts 7/8")
    assert "⟶  D2 | G2 B2 d2" in feedback
    assert "\n" not in feedback
    assert result.feedback(tier="error") == ""


def test_a_bar_line_missing_between_two_full_bars_is_a_fault() -> None:
    result = check_abc(GOOD.replace("d4 B2 | A>B", "d4 B2 A>B"))
    assert result.ok
    assert "a bar line is missing" in result.faults[0].message


@pytest.mark.parametrize(
    ("damage", "tier", "expected"),
    [
        ("[ce2", "error", "a chord opened with [ is not closed"),
        ('"Am [ce]2', "error", "is not closed on this line"),
        ("{ga [ce]2", "error", "grace notes opened with { are not closed"),
        ("^ | [ce]2", "error", "an accidental (^, _ or =) needs a note after it"),
        ("[Am] [ce]2", "error", '[Am] is not a chord of notes (m is not a note); a chord name '
                                'goes in quotes before a note, e.g. "Am"A2'),
        ("F#2 [ce]2", "error", "F# is not ABC: a sharp goes before its note, ^F"),
        # music21, the fallback, cannot read these two tunes at all: abc2midi must say it
        pytest.param("(ce2", "fault", "a slur opened with ( is never closed",
                     marks=needs_abc2midi),
        pytest.param("G2 ) [ce]2", "fault", "a slur is closed with ) but was never opened",
                     marks=needs_abc2midi),
        ("! [ce]2", "fault", "a lone ! is read as an old-style line break"),
        ("[] [ce]2", "fault", "an empty chord [] holds no notes"),
    ],
)
def test_unclosed_and_stray_marks_are_named_at_their_line_in_their_tier(
    damage: str, tier: str, expected: str
) -> None:
    tune = GOOD.replace("[ce]2", damage, 1)
    result = check_abc(tune)
    found = [d for d in result.errors + result.faults if expected in d.message]
    assert found, [d.message for d in result.errors + result.faults]
    assert found[0].severity == tier and found[0].line == 8
    assert result.ok == (tier == "fault")


def test_many_faults_never_hide_an_error_and_are_all_counted() -> None:
    bars = "".join("C2 D2 E2 F2 |" for _ in range(60))  # 8/8 bars under M:3/4, each too long
    result = check_abc(GOOD.replace("G4 |]", "G6 |\n" + bars + "\n[ce2 |]"))
    assert not result.ok and "a chord opened with [ is not closed" in result.errors[0].message
    assert result.fault_count == 60 and len(result.faults) == 30
    assert result.feedback(limit=3).endswith("… and 58 more faults")  # 1 error, 2 faults shown


def test_missing_key_is_an_error_and_never_guessed() -> None:
    assert "no K: (key) field" in only_error(check_abc(GOOD.replace("K:G\n", "")))


def test_music_before_the_key_line_says_k_must_end_the_header() -> None:
    tune = GOOD.replace("K:G\n", "").replace("|]\n", "|]\nK:G\n")
    assert "music before the K: field" in only_error(check_abc(tune))


@pytest.mark.parametrize(
    ("field", "expected"),
    [("K:Q", "K:Q is not a known key"), ("M:3/x", "M:3/x is not a meter"),
     ("L:eighth", "L:eighth is not a note length"), ("V:", "V: needs a voice name")],
)
def test_unknown_header_values(field: str, expected: str) -> None:
    letter = field[0]
    lines = [line for line in GOOD.splitlines() if not line.startswith(f"{letter}:")]
    lines.insert(lines.index("K:G") if letter != "K" else 5, field)
    result = check_abc("\n".join(lines) + "\n")
    assert any(expected in d.message for d in result.errors), result.errors


@pytest.mark.parametrize("key", ["G", "Gm", "F#m", "Bb", "D dorian", "Amix", "E minor",
                                 "C clef=bass", "none", "HP", "D exp ^f", "Dmix=c", "G major",
                                 "Gmaj", "C bass3", "C treble-8"])
def test_known_keys(key: str) -> None:
    assert check_abc(GOOD.replace("K:G", f"K:{key}")).clean


def test_a_key_with_a_word_that_is_no_mode_is_a_fault_and_an_empty_key_an_error() -> None:
    pentatonic = check_abc(GOOD.replace("K:G", "K:G Pentatonic"))
    assert pentatonic.ok
    assert ("K:G Pentatonic: 'Pentatonic' is not an ABC mode, so players read the key as G "
            "major") in pentatonic.faults[0].message
    empty = check_abc(GOOD.replace("K:G", "K:"))
    assert not empty.ok and "K: names no key" in empty.errors[0].message


def test_missing_x_is_an_error_that_repair_can_fix() -> None:
    result = check_abc(GOOD.replace("X:1\n", ""))
    assert "the tune has no X: line" in result.errors[0].message


def test_prose_inside_the_body_is_an_error_at_its_line() -> None:
    tune = GOOD.replace("G2 B2 d2 | [ce]", "This tune is about the morning sun.\nG2 B2 d2 | [ce]")
    result = check_abc(tune)
    assert result.errors[0].line == 8
    assert "unexpected" in result.errors[0].message


def test_notes_an_octave_down_before_spaces_are_music_not_a_list_of_words() -> None:
    """`GAB, DEF, GAB,` ends its groups with an octave mark, not a comma of prose."""
    tune = GOOD.replace("G2 B2 d2 | [ce]", "GAB, DEF, GAB, C | G2 B2 d2 | [ce]")
    assert check_abc(tune).ok, check_abc(tune).feedback()
    assert is_music_line("GAB, DEF, GAB, C |") and not is_music_line("Dad, Abe, a faded cab.")


@needs_abc2midi
def test_a_tune_that_makes_abc2midi_abort_is_an_error_not_a_crash() -> None:
    """abc2midi 4.84 aborts ("buffer overflow detected") on two tuplets of mixed lengths in a
    bar before a repeat, leaving an empty MIDI file behind."""
    result = check_abc("X:1\nK:C\nF(7E6d5aEgbga4d5gF(9gDfzd/16D/dfFef:|\n")
    assert not result.ok
    assert [error.message for error in result.errors] == ["abc2midi wrote no MIDI for this tune"]


def test_blank_line_inside_a_tune_is_an_error() -> None:
    result = check_abc(GOOD.replace("|\nG2 B2", "|\n\nG2 B2"))
    assert "music after a blank line" in result.errors[0].message
    assert result.errors[0].line == 9


def test_voices_are_counted_and_bars_checked_per_voice() -> None:
    tune = """X:3
T:Two voices
M:4/4
L:1/4
K:C
V:1 name="melody"
%%MIDI program 73
c d e f | g2 g2 | a g f e | d4 |]
V:2 clef=bass
%%MIDI program 32
C,2 G,,2 | C,2 E,2 | F,2 C,2 | G,,4 |]
"""
    result = check_abc(tune)
    assert result.ok, result.feedback()
    assert (result.voices, result.bars, result.notes) == (2, 4, 18)
    faulty = check_abc(tune.replace("C,2 E,2 |", "C,2 E,2 E, |"))
    assert faulty.ok and faulty.faults[0].line == 11
    assert "bar 2 of voice 2 lasts 5/4" in faulty.faults[0].message
    unequal = check_abc(tune.replace("F,2 C,2 | G,,4 |]", "F,2 C,2 |]"))
    assert unequal.ok and unequal.fault_count == 1
    assert ("voice 2 lasts 12 beats but voice 1 lasts 16; voices should end together"
            in unequal.faults[0].message)
    assert unequal.faults[0].line == 11


REAL_ABC_21 = """X:7
T:What abc2midi plays cleanly
C:ABC 2.1, as the Debian examples write it
M:2
L:1/4
Q:1/4=100
K:C
%%MIDI program 1 19
%%begintext
Free text printed with the tune, for example about the sources of this one.
%%endtext
V:1
^/c _3/4e c d | [M:3/4] e ^/e f | [K:C bass3] C, D, E, | [L:1/8] c2 d2 e2 |]
V:2 clef=perc
%%MIDI channel 10
B,, B,, ^D,, B,, | [M:3/4] B,, B,, ^D,, | F,, F,, F,, | F,, F,, F,, |]
"""


@needs_abc2midi
def test_real_abc_21_that_abc2midi_plays_cleanly_is_not_an_error() -> None:
    """Microtones, a meter with no note value, a percussion voice, inline fields, %%MIDI lines
    and a text block; the meter is only a fault (its bars cannot be checked). music21, the
    fallback reader, cannot read `M:2`: abc2midi is the reference."""
    compiled = compile_abc(REAL_ABC_21, backend="abc2midi")
    result = compiled.check
    assert result.ok, result.feedback()
    assert compiled.midi is not None and result.voices == 2
    assert [fault.message for fault in result.faults] == [
        "M:2 gives no note value, so bar lengths are not checked; write e.g. M:2/4 or M:2/2"]


@needs_abc2midi  # music21, the fallback, cannot read a continued header line
def test_continued_header_lines_and_unknown_fields_are_not_errors() -> None:
    tune = GOOD.replace("T:Morning light", "T:Morning \\\nlight\nY:not a field")
    result = check_abc(tune)
    assert result.ok
    assert ("Y: is not an ABC field, so players skip it; remove it or write it as a comment "
            "(% ...)") in [fault.message for fault in result.faults]


def test_a_drum_pattern_with_no_notes_plays_but_rests_alone_do_not() -> None:
    drums = "X:1\nT:t\nM:2/4\nL:1/8\nK:C\n%%MIDI drum dddd 35 36 37 38\n%%MIDI drumon\nz4|z4|]\n"
    result = check_abc(drums)
    assert result.ok and "only a %%MIDI drum pattern" in result.faults[0].message
    assert "the tune has no notes" in only_error(check_abc(drums.replace("%%MIDI drumon\n", "")))


def test_each_diagnostic_says_its_tier() -> None:
    result = check_abc(GOOD.replace("d4 B2 |", "d4 |").replace("[ce]2", "[ce2", 1))
    payload = result.model_dump()
    assert {d["severity"] for d in payload["errors"]} == {"error"}
    assert {d["severity"] for d in payload["faults"]} == {"fault"}
    assert payload["error_count"] == 1 and payload["fault_count"] >= 1


def test_inline_meter_and_unit_changes_are_followed() -> None:
    tune = """X:4
T:Changes
M:4/4
L:1/8
K:C
c2 d2 e2 f2 | [M:3/4] g2 a2 b2 | [L:1/4] c' b a | [M:6/8][L:1/8] g3 f3 |]
"""
    assert check_abc(tune).ok


def test_tuplets_broken_rhythm_ties_and_multibar_rests() -> None:
    tune = """X:5
T:Rhythms
M:2/4
L:1/16
K:Am
(3A2B2c2 d4 | e>d c<B A4- | A8 | Z2 | (5ABcde (3fed c4 | c8 |]
"""
    result = check_abc(tune)
    assert result.ok, result.feedback()
    assert result.bars == 7


def test_size_limit_points_at_the_line_that_passes_it() -> None:
    settings = Settings(max_abc_bytes=1_000)
    body = "".join("c2 d2 e2 f2 | g2 a2 b2 c'2 |\n" for _ in range(60))
    result = check_abc(GOOD.replace("|]\n", "|\n") + body, settings=settings)
    assert not result.ok and len(result.errors) == 1
    assert "over the 1,000-byte limit" in result.errors[0].message
    text = GOOD.replace("|]\n", "|\n") + body
    assert result.errors[0].line == text.encode()[:1_000].count(b"\n") + 1


def test_note_limit() -> None:
    result = check_abc(GOOD, settings=Settings(max_notes=10))
    assert "the tune has 28 notes; the limit is 10" in only_error(result)


def test_binary_bytes_are_refused_at_their_line() -> None:
    data = GOOD.encode().replace(b"d4 B2", b"d4 \x00\x01\xfe B2")
    result = check_abc(data)
    control = [d for d in result.errors if "control character" in d.message]
    assert control and control[0].line == 7


def test_crlf_and_latin1_input() -> None:
    text = GOOD.replace("T:Morning light", "T:Café").replace("\n", "\r\n").encode("latin-1")
    result = check_abc(text)
    assert result.ok
    assert "not UTF-8; read as Latin-1" in result.faults[0].message


def test_no_tune_at_all() -> None:
    result = check_abc("Here is my tune, I hope you like it.\n")
    assert not result.ok and result.tunes == 0
    assert "no ABC tune found" in result.errors[0].message


def test_empty_body_has_no_music() -> None:
    assert "no music after its K: line" in only_error(check_abc("X:1\nT:t\nM:4/4\nK:C\n"))


def test_rests_only_has_no_notes() -> None:
    rests = "X:1\nT:t\nM:4/4\nL:1/4\nK:C\nz4|z4|]\n"
    assert "the tune has no notes" in only_error(check_abc(rests))


def test_several_tunes_are_all_checked() -> None:
    second = GOOD.replace("X:1", "X:2").replace("[ce]2", "[ce2", 1)
    result = check_abc(GOOD + "\n" + second)
    assert result.tunes == 2
    assert not result.ok
    assert result.errors[0].line == 9 + 8  # the second tune starts on line 10


@needs_abc2midi
def test_abc2midi_errors_are_reported_at_their_place() -> None:
    result = check_abc(GOOD.replace("A>B c2", "A>>>>B c2"), backend="abc2midi")
    error = result.errors[0]
    assert (error.checker, error.line) == ("abc2midi", 7)
    assert error.message == "Too many >'s"


@needs_abc2midi
def test_abc2midi_complaints_about_whole_music_are_faults() -> None:
    tune = GOOD.replace("K:G\n", "K:G\nI:abc2midi foo\n%%MIDI tempo 120\n").replace(
        "c2 A2 |", "c2 A-^A |").replace("G2 B2 d2 | [ce]2", "G,2 b,2 d2 | [ce]2")
    result = check_abc(tune, backend="abc2midi")
    assert result.ok, result.feedback()
    messages = {d.message for d in result.faults if d.checker == "abc2midi"}
    assert "I: key ' abc2midi' not recognized" in messages
    assert "Could not find note to be tied" in messages
    assert '%%MIDI command "tempo" not recognized; players skip this directive' in messages
    assert any(m.startswith("Bad pitch specifier , after note b; write a lower octave with a "
                            "capital letter") for m in messages)
    decorated = check_abc(GOOD.replace("d4 B2 |", "d4 ~(B2) |"), backend="abc2midi")
    assert decorated.ok
    assert "Malformed note : expecting a-g or A-G" in {d.message for d in decorated.faults}


@needs_abc2midi
def test_both_backends_agree_on_the_shape() -> None:
    backends: tuple[Backend, ...] = ("abc2midi", "music21")
    checks = [check_abc(GOOD, backend=backend) for backend in backends]
    assert [c.backend for c in checks] == ["abc2midi", "music21"]
    shapes = {(c.ok, c.tunes, c.voices, c.bars, c.notes, c.duration_beats) for c in checks}
    assert len(shapes) == 1


TEMPO_CHANGES = """X:1
T:Slowing down
M:4/4
L:1/4
Q:1/4=120
K:C
|: C D E F :|
[Q:1/4=60] G A B c | [Q:1/4=90] c4 |]
"""
TWO_VOICES = """X:1
T:Slowing down together
M:4/4
L:1/4
Q:1/4=120
K:C
V:1
C D E F | [Q:1/4=60] G A B c | c4 |]
V:2
C,4 | G,4 | C,4 |]
"""


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("abc", [GOOD, TEMPO_CHANGES, TWO_VOICES],
                         ids=["one-voice", "tempo-changes", "two-voices"])
def test_a_tunes_playing_time_is_midos_length_of_its_midi(backend: Backend, abc: str) -> None:
    midi = compile_abc(abc, backend=backend).midi
    assert midi is not None
    length = mido.MidiFile(file=io.BytesIO(midi)).length
    assert length > 0 and midi_seconds(midi) == pytest.approx(length, rel=1e-12)


def test_playing_time_follows_the_tempo_of_every_track() -> None:
    first = mido.MidiTrack([
        mido.MetaMessage("set_tempo", tempo=400_000, time=0),
        mido.Message("note_on", note=60, time=0), mido.Message("note_off", note=60, time=960),
        mido.MetaMessage("set_tempo", tempo=1_000_000, time=0)])
    second = mido.MidiTrack([  # at the same tick, the later track's tempo is the one played
        mido.MetaMessage("set_tempo", tempo=250_000, time=960),
        mido.Message("note_on", note=64, time=0), mido.Message("note_off", note=64, time=480)])
    file = mido.MidiFile(type=1, ticks_per_beat=480, tracks=[first, second])
    buffer = io.BytesIO()
    file.save(file=buffer)
    # Two beats at 0.4 s a beat, then one at 0.25 s.
    assert midi_seconds(buffer.getvalue()) == pytest.approx(2 * 0.4 + 0.25) == file.length
