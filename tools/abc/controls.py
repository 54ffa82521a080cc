"""Musical controls: what a user asks of a tune (length, tempo, key and mode, meter, voices,
instruments), read from what people write, spelled as ABC, and checked against a tune.

`read_controls` takes the controls as people write them ("D minor", "Bb", "6/8", "string
quartet", "violin, viola, 42") and gives `Controls`, spelled as ABC writes them, or refuses a
value with a one-line `ControlError` that names the control. `judge_tune` says, control by
control, whether a checked tune honours what was asked (`Verdict`); each control it ignores is a
fault (`control_faults`), never an error: the tune still plays. `grammar_rules` narrows the ABC
grammar (`tools.abc.grammar`) so that a constrained model writes the fixed header values by
construction.

How each control is counted (the tolerances are the constants below):

- **tempo** is beats a minute of the meter's beat: a quarter note in 2/4, 3/4, 4/4 and C, a half
  note in 2/2 and C|, a dotted quarter in 6/8, 9/8 and 12/8 (a dotted eighth in 6/16, 9/16,
  12/16), else the meter's note value. 72 in 6/8 is `Q:3/8=72`. A tune honours it when its
  first `Q:` sounds within `TEMPO_TOLERANCE_BPM` of it, so `Q:1/4=108` honours 72 in 6/8. The
  beat is the asked meter's, else the tune's `M:`, else 4/4's.
- **key**: the tune's `K:` names the same tonic (enharmonic spellings are equal: C# is Db) and
  the same mode (major is ionian, minor is aeolian and m; modes are read by their first three
  letters, as ABC does).
- **meter**: the tune's header `M:` has the same figures; C equals 4/4 and C| equals 2/2, while
  3/4 and 6/8 differ.
- **voices**: the voices that hold music.
- **instruments**: the General MIDI program (0-127, as `%%MIDI program` numbers them) each voice
  plays with, in the order of the voices.
- **bars**: bars as written in the longest voice (repeats not unfolded), within
  `BAR_TOLERANCE` of the asked count, and at least one bar.
- **seconds**: the playing time (tempo and repeats included), within `SECONDS_TOLERANCE`, and
  at least `MIN_SECONDS_TOLERANCE`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, Field

from img2music.tools.abc.diagnostics import Diagnostic
from img2music.tools.abc.grammar import GrammarError, grammar_file_text, rule_definition
from img2music.tools.abc.repair import KEY_SPELLING, spelled_tonic
from img2music.tools.abc.scan import HeaderField, ScannedTune, is_key_parameter, tempo_of

Control = Literal["bars", "seconds", "tempo", "key", "meter", "voices", "instruments"]

# Bounds: what a model can write within the ABC grammar (tempo 40-239, voices 1-8) and a
# player plays within the playing-time limit.
MIN_BARS, MAX_BARS = 1, 256
MIN_SECONDS, MAX_SECONDS = 5.0, 600.0
MIN_TEMPO, MAX_TEMPO = 40, 239
MIN_VOICES, MAX_VOICES = 1, 8
# How close a tune must come to what was asked.
TEMPO_TOLERANCE_BPM = 2
BAR_TOLERANCE = 0.10  # of the asked bars, and at least one bar
SECONDS_TOLERANCE = 0.10  # of the asked seconds, and at least MIN_SECONDS_TOLERANCE
MIN_SECONDS_TOLERANCE = 2.0

# Each mode by the first three letters of its names (ABC reads modes so); "m" is minor.
MODES = {"maj": "major", "ion": "major", "m": "minor", "min": "minor", "aeo": "minor",
         "dor": "dorian", "phr": "phrygian", "lyd": "lydian", "mix": "mixolydian",
         "loc": "locrian"}
MODE_WORDS = ("major", "ionian", "minor", "aeolian", "dorian", "phrygian", "lydian",
              "mixolydian", "locrian")
ABC_MODE = {"major": "", "minor": "m", "dorian": "dor", "phrygian": "phr", "lydian": "lyd",
            "mixolydian": "mix", "locrian": "loc"}
SEMITONES = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
METER_FIGURES = re.compile(r"^(?P<count>\d+(?:\+\d+)*)/(?P<value>\d+)$")
METER_VALUES = (2, 4, 8, 16)  # the note values the ABC grammar lets a meter have
COMPOUND_COUNTS = (6, 9, 12)
MAX_METER_COUNT = 12

# Ensembles by name: the General MIDI program of each voice, top to bottom. An ensemble of one
# instrument (`SAME_INSTRUMENT`) takes any number of voices; the count here is its default.
ENSEMBLES: dict[str, tuple[int, ...]] = {
    "piano": (0, 0),  # right hand, left hand
    "solo piano": (0,),
    "guitar": (24,),
    "organ": (19, 19),
    "harp": (46, 46),
    "choir": (52, 52, 52, 52),  # soprano, alto, tenor, bass
    "string quartet": (40, 40, 41, 42),  # violins, viola, cello
    "string trio": (40, 41, 42),
    "string orchestra": (40, 40, 41, 42, 43),
    "piano trio": (40, 42, 0),  # violin, cello, piano
    "folk band": (110, 78, 21, 25),  # fiddle, whistle, accordion, steel guitar
    "celtic band": (110, 78, 109, 25),  # fiddle, whistle, bagpipe, guitar
    "wind quintet": (73, 68, 71, 60, 70),  # flute, oboe, clarinet, horn, bassoon
    "brass quintet": (56, 56, 60, 57, 58),  # trumpets, horn, trombone, tuba
    "jazz combo": (56, 66, 0, 32),  # trumpet, tenor sax, piano, double bass
    "orchestra": (73, 68, 71, 60, 56, 40, 41, 42),
}
SAME_INSTRUMENT = frozenset({"piano", "solo piano", "guitar", "organ", "harp", "choir"})
# Short names people write for General MIDI programs whose full names are longer.
INSTRUMENT_ALIASES = {
    "piano": 0, "grand piano": 0, "electric piano": 4, "organ": 19, "guitar": 24,
    "classical guitar": 24, "nylon guitar": 24, "steel guitar": 25, "acoustic guitar": 25,
    "electric guitar": 27, "bass": 32, "double bass": 43, "upright bass": 32,
    "bass guitar": 33, "electric bass": 33, "harp": 46, "strings": 48,
    "string ensemble": 48, "choir": 52, "voice": 53, "voices": 52, "horn": 60,
    "sax": 65, "saxophone": 65, "whistle": 78, "tin whistle": 78, "pan pipes": 75,
    "bells": 14, "drum": 116, "steel drum": 114,
}
MAX_INSTRUMENTS_TEXT = 400


class ControlError(ValueError):
    """A control's value cannot be read; the message names the control and says what to write."""


@dataclass(frozen=True)
class Key:
    """A key: its tonic as ABC spells it (F#, Bb) and its mode (major, minor, dorian, …)."""

    tonic: str
    mode: str

    @property
    def abc(self) -> str:
        """The value of a `K:` field: "Dm", "F#dor", "Bb"."""
        return self.tonic + ABC_MODE[self.mode]

    @property
    def name(self) -> str:
        return f"{self.tonic} {self.mode}"

    def same_as(self, other: Key) -> bool:
        """The same tonic (enharmonic spellings equal) and the same mode."""
        return _pitch_class(self.tonic) == _pitch_class(other.tonic) and self.mode == other.mode


@dataclass(frozen=True)
class Controls:
    """What a run asks of its tune, spelled as ABC; None (or no programs) where nothing was
    asked. `voices` is the asked count, or the count the instruments imply."""

    bars: int | None = None
    seconds: float | None = None
    tempo: int | None = None
    key: Key | None = None
    meter: str | None = None
    voices: int | None = None
    programs: tuple[int, ...] = ()

    @property
    def asked(self) -> bool:
        return any(value not in (None, ()) for value in self.__dict__.values())

    def tempo_field(self, meter: str | None = None) -> str | None:
        """The `Q:` value for the asked tempo in the beat of the asked meter (else `meter`, else
        4/4): "1/4=72", "3/8=72"."""
        if self.tempo is None:
            return None
        return f"{_fraction(beat_of(self.meter or meter))}={self.tempo}"

    def bar_range(self) -> tuple[int, int] | None:
        """The fewest and most bars that honour the asked length in bars."""
        if self.bars is None:
            return None
        room = max(1, round(self.bars * BAR_TOLERANCE))
        return max(MIN_BARS, self.bars - room), self.bars + room

    def seconds_range(self) -> tuple[float, float] | None:
        if self.seconds is None:
            return None
        room = max(MIN_SECONDS_TOLERANCE, self.seconds * SECONDS_TOLERANCE)
        return max(0.0, self.seconds - room), self.seconds + room

    def bars_for_seconds(self) -> int | None:
        """About how many bars last the asked seconds at the asked tempo and meter (4/4 when no
        meter is asked), for the prompt; None without both a length in seconds and a tempo."""
        if self.seconds is None or self.tempo is None:
            return None
        beats_a_bar = bar_length(self.meter or "4/4") / beat_of(self.meter)
        return max(1, round(self.seconds * self.tempo / 60 / float(beats_a_bar)))


class Verdict(BaseModel):
    """Whether a tune honours one control: what was asked, what the tune has, and what to
    change when it does not."""

    control: Control
    asked: str = Field(description="What was asked, as a person reads it.")
    found: str = Field(description="What the tune has ('none' when it says nothing).")
    honoured: bool
    message: str = Field(default="", description="What to change, when not honoured.")
    line: int = Field(default=0, ge=0, description="The tune's line the control reads, or 0.")
    source: str = Field(default="", description="That line, as written.")


def read_controls(
    *,
    bars: int | None = None,
    seconds: float | None = None,
    tempo: int | None = None,
    key: str | None = None,
    meter: str | None = None,
    voices: int | None = None,
    instruments: str | None = None,
) -> Controls:
    """The controls as given, checked and spelled as ABC; empty text is nothing asked."""
    _check_bounds("bars", bars, MIN_BARS, MAX_BARS)
    _check_bounds("seconds", seconds, MIN_SECONDS, MAX_SECONDS)
    _check_bounds("tempo", tempo, MIN_TEMPO, MAX_TEMPO)
    _check_bounds("voices", voices, MIN_VOICES, MAX_VOICES)
    programs: tuple[int, ...] = ()
    if instruments and instruments.strip():
        programs = instrument_programs(instruments, voices)
    return Controls(
        bars=bars, seconds=float(seconds) if seconds is not None else None, tempo=tempo,
        key=read_key(key) if key and key.strip() else None,
        meter=read_meter(meter) if meter and meter.strip() else None,
        voices=voices if voices is not None else (len(programs) or None),
        programs=programs,
    )


def read_key(text: str, *, field: str = "key", parameters: bool = False) -> Key:
    """A key as people write it ("D minor", "Dm", "d minor", "F# dorian", "B flat", "Eb") or
    as a `K:` value; with `parameters`, what a `K:` may add after the key (a clef, explicit
    accidentals) is left aside."""
    cleaned = " ".join(text.split("%", 1)[0].split())
    match = KEY_SPELLING.match(cleaned)
    words = match["rest"].split() if match else []
    if parameters:
        words = [word for word in words if not is_key_parameter(word)]
    mode = _mode(words[0]) if words else "major"
    if match is None or len(words) > 1 or mode is None:
        raise ControlError(
            f"{field}: {text.strip()[:40]!r} is not a key; write a tonic A-G with # or b and a "
            "mode, e.g. 'D minor', 'Dm', 'F# dorian', 'Bb major' or 'Eb'")
    return Key(spelled_tonic(match), mode)


def read_meter(text: str, *, field: str = "meter") -> str:
    """A meter as ABC writes it: "3/4", "6/8", "2+3/8", "C" (common time) or "C|" (cut time)."""
    value = "".join(text.split())
    if value in ("C", "C|"):
        return value
    match = METER_FIGURES.match(value)
    example = "e.g. 4/4, 3/4, 6/8, C (common time) or C| (cut time)"
    if match is None:
        raise ControlError(f"{field}: {text.strip()[:40]!r} is not a meter; write {example}")
    counts = [int(part) for part in match["count"].split("+")]
    note_value = int(match["value"])
    if note_value not in METER_VALUES:
        raise ControlError(f"{field}: {value!r} counts notes of 1/{note_value}; the lower figure "
                           f"is a note value, {', '.join(map(str, METER_VALUES))}; write {example}")
    if (len(counts) == 1 and not 1 <= counts[0] <= MAX_METER_COUNT) or (
            len(counts) > 1 and (len(counts) > 4 or not all(1 <= c <= 9 for c in counts))):
        raise ControlError(f"{field}: {value!r} has a bar of {sum(counts)} beats; write 1 to "
                           f"{MAX_METER_COUNT} beats (or a sum such as 2+3/8), {example}")
    return value


def instrument_programs(text: str, voices: int | None = None) -> tuple[int, ...]:
    """The General MIDI program of each voice: an ensemble's ("string quartet"), or one per
    voice from a comma-separated list of program numbers (0-127) or instrument names
    ("violin, violin, viola, cello", "40,40,41,42"). One instrument, or an ensemble of one
    instrument (piano, choir…), is played by every voice asked; otherwise the voices asked must
    be as many as the instruments."""
    if len(text) > MAX_INSTRUMENTS_TEXT:
        raise ControlError(f"instruments: the list is over {MAX_INSTRUMENTS_TEXT} characters")
    name = _plain_name(text)
    if name in ENSEMBLES:
        programs = ENSEMBLES[name]
        same = name in SAME_INSTRUMENT
        what = f"{name!r} is an ensemble of {len(programs)} voices"
    else:
        programs = tuple(_program(part) for part in text.split(","))
        same = len(programs) == 1
        what = f"{len(programs)} instruments were named"
    if voices is not None and voices != len(programs):
        if not same:
            raise ControlError(f"instruments: {what} but voices is {voices}; leave voices out "
                               f"or ask for {len(programs)}")
        programs = programs[:1] * voices
    if len(programs) > MAX_VOICES:
        raise ControlError(f"instruments: {len(programs)} voices; a tune has at most "
                           f"{MAX_VOICES}")
    return programs


def program_name(program: int) -> str:
    """General MIDI's name of a program (0-127): 40 → "Violin"."""
    return _general_midi()[program]


def beat_of(meter: str | None) -> Fraction:
    """The note a tempo counts in this meter (see the module's docstring); 4/4's without one."""
    if meter in (None, "C"):
        return Fraction(1, 4)
    if meter == "C|":
        return Fraction(1, 2)
    count, _, value = meter.partition("/")
    note = Fraction(1, int(value))
    total = sum(int(part) for part in count.split("+"))
    return 3 * note if "+" not in count and total in COMPOUND_COUNTS and int(value) >= 8 else note


def bar_length(meter: str) -> Fraction:
    """A bar of `meter` in whole notes."""
    if meter in ("C", "C|"):
        return Fraction(1)
    count, _, value = meter.partition("/")
    return Fraction(sum(int(part) for part in count.split("+")), int(value))


def judge_tune(
    controls: Controls,
    tune: ScannedTune,
    *,
    seconds: float | None = None,
    programs: Sequence[int] | None = None,
) -> list[Verdict]:
    """Each asked control, honoured or not by `tune` (scanned); `seconds` is its playing time
    and `programs` the program each voice plays with, in order (both from its MIDI; None when
    it has none)."""
    header = {field.letter: field for field in reversed(tune.header)}  # the first of each
    meter_field = header.get("M")
    tune_meter = _tune_meter(meter_field.value) if meter_field else None
    verdicts: list[Verdict] = []
    if controls.meter is not None:
        verdicts.append(_meter_verdict(controls.meter, tune_meter, meter_field))
    if controls.tempo is not None:
        verdicts.append(_tempo_verdict(controls, tune_meter, header.get("Q")))
    if controls.key is not None:
        verdicts.append(_key_verdict(controls.key, header.get("K")))
    voices = [name for name in tune.voices if any(bar.voice == name for bar in tune.bars)]
    voice_count = len(voices) or (1 if tune.notes else 0)
    if controls.voices is not None:
        verdicts.append(Verdict(
            control="voices", asked=str(controls.voices), found=str(voice_count),
            honoured=voice_count == controls.voices,
            message=f"the tune has {_count(voice_count, 'voice')} with music; "
                    f"{controls.voices} were asked: write V:1 to V:{controls.voices}, each "
                    "with its music"))
    if controls.programs:
        verdicts.append(_instruments_verdict(controls.programs, list(programs or [])))
    bar_range = controls.bar_range()
    if controls.bars is not None and bar_range is not None:
        fewest, most = bar_range
        found = tune.bar_count
        change = (f"write {controls.bars - found} more" if found < fewest
                  else f"take out {found - controls.bars}")
        verdicts.append(Verdict(
            control="bars", asked=str(controls.bars), found=str(found),
            honoured=fewest <= found <= most,
            message=f"the tune has {_count(found, 'bar')}; {controls.bars} were asked ({fewest} "
                    f"to {most} pass): {change} bars in each voice"))
    seconds_range = controls.seconds_range()
    if controls.seconds is not None and seconds_range is not None:
        low, high = seconds_range
        played = seconds or 0.0
        verdicts.append(Verdict(
            control="seconds", asked=f"{controls.seconds:g} s", found=f"{played:.1f} s",
            honoured=low <= played <= high,
            message=f"the tune plays for {played:.0f} s; {controls.seconds:g} s were asked "
                    f"({low:.0f} to {high:.0f} s pass): "
                    + ("write more bars or a slower tempo" if played < low
                       else "write fewer bars or a faster tempo")))
    return [verdict if not verdict.honoured else verdict.model_copy(update={"message": ""})
            for verdict in verdicts]


def control_faults(verdicts: Sequence[Verdict]) -> list[Diagnostic]:
    """A fault for each control the tune does not honour: it plays, but not as asked."""
    return [Diagnostic(severity="fault", line=verdict.line, col=0,
                       message=f"not as asked ({verdict.control}): {verdict.message}",
                       source=verdict.source, checker="controls")
            for verdict in verdicts if not verdict.honoured]


def grammar_rules(controls: Controls) -> dict[str, str]:
    """Rules of the ABC grammar (`prompts/abc.ebnf`) to swap in so that a constrained model
    writes what was asked by construction: the header's `M:`, `Q:` (its beats a minute; its
    beat too when the meter is asked) and `K:` values, present and fixed wherever the field is
    written (no change of key, meter or tempo on the way); voice numbers 1 to the asked count;
    and `%%MIDI program` numbers among the asked ones. The count of voices and which voice
    plays which program are left to the checker."""
    rules: dict[str, str] = {}
    required: list[str] = []
    if controls.meter is not None:
        rules["meter"] = _literal(controls.meter)
        required.append("meter-line")
    if controls.tempo is not None:
        number = _literal(str(controls.tempo))
        beat = _literal(_fraction(beat_of(controls.meter))) if controls.meter else "beat"
        fixed = f'{beat} "=" {number}'
        rules["tempo"] = f'{fixed} (" " tempo-text)? | tempo-text " " {fixed}'
        rules["plain-tempo"] = fixed
        required.append("tempo-line")
    if controls.key is not None:
        rules["key"] = f'{_literal(controls.key.abc)} (" " clef)?'
    if controls.voices is not None:
        rules["voice-id"] = " | ".join(_literal(str(n)) for n in range(1, controls.voices + 1))
    if controls.programs:
        rules["midi-program"] = " | ".join(_literal(str(p))
                                           for p in sorted(set(controls.programs)))
    if required:  # the header holds these lines, before its K: line
        lines = "".join(f"{line} header-lines " for line in required)
        tune = rule_definition(grammar_file_text(), "tune")
        if " key-line " not in tune:
            raise GrammarError("the grammar's tune rule has no key-line to put the header's "
                               "fixed lines before")
        rules["tune"] = tune.replace(" key-line ", f" {lines}key-line ", 1)
    return rules


def _check_bounds(name: str, value: float | None, low: float, high: float) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ControlError(f"{name}: {value!r} is not a number")
    if not low <= value <= high:
        raise ControlError(f"{name}: {value:g} is outside {low:g} to {high:g}")


def _mode(word: str) -> str | None:
    """The mode a word names: "m", or a mode's name or its start of three letters or more."""
    lowered = word.lower()
    if lowered == "m":
        return "minor"
    if len(lowered) < 3 or not any(name.startswith(lowered) for name in MODE_WORDS):
        return None
    return MODES[lowered[:3]]


def _pitch_class(tonic: str) -> int:
    shift = {"#": 1, "b": -1}.get(tonic[1:], 0)
    return (SEMITONES[tonic[0]] + shift) % 12


def _fraction(value: Fraction) -> str:
    return f"{value.numerator}/{value.denominator}"


def _literal(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _plain_name(text: str) -> str:
    return " ".join(re.sub(r"[-_]", " ", text.lower()).split())


def _program(text: str) -> int:
    name = _plain_name(text)
    if name.isdigit():
        if int(name) > 127:
            raise ControlError(f"instruments: program {name} is outside General MIDI's 0-127")
        return int(name)
    names = {_plain_name(gm): number for number, gm in enumerate(_general_midi())}
    if name in names:
        return names[name]
    if name in INSTRUMENT_ALIASES:
        return INSTRUMENT_ALIASES[name]
    containing = [number for gm, number in names.items() if name and name in gm]
    if len(containing) == 1:
        return containing[0]
    raise ControlError(
        f"instruments: {text.strip()[:40]!r} is neither an ensemble ({', '.join(ENSEMBLES)}) "
        "nor a General MIDI instrument (a name such as violin or flute, or a program 0-127)")


@lru_cache(maxsize=1)
def _general_midi() -> tuple[str, ...]:
    """General MIDI's 128 program names, as pretty_midi lists them."""
    from pretty_midi.constants import INSTRUMENT_MAP

    return tuple(INSTRUMENT_MAP)


def _tune_meter(value: str) -> str | None:
    try:
        return read_meter(value.split("%", 1)[0])
    except ControlError:
        return None


def _source(field: HeaderField | None) -> tuple[int, str]:
    """The tune's line of a header field and its text, (0, "") when it has none."""
    return (field.line, f"{field.letter}:{field.value}") if field is not None else (0, "")


def _meter_verdict(asked: str, found: str | None, field: HeaderField | None) -> Verdict:
    line, source = _source(field)
    same = found is not None and _meter_figures(found) == _meter_figures(asked)
    return Verdict(control="meter", asked=asked, found=found or "none", honoured=same,
                   line=line, source=source,
                   message=f"the tune is in {found or 'no meter'}; {asked} was asked: write "
                           f"M:{asked} in the header")


def _meter_figures(meter: str) -> tuple[int, int]:
    """C as 4/4, C| as 2/2, a sum as its total."""
    meter = {"C": "4/4", "C|": "2/2"}.get(meter, meter)
    count, _, value = meter.partition("/")
    return sum(int(part) for part in count.split("+")), int(value)


def _tempo_verdict(controls: Controls, tune_meter: str | None,
                   field: HeaderField | None) -> Verdict:
    assert controls.tempo is not None
    beat = beat_of(controls.meter or tune_meter)
    line, source = _source(field)
    quarters = tempo_of(source)[0] if field is not None else None
    written = f"{_fraction(beat)}={controls.tempo}"
    if quarters is None:
        return Verdict(control="tempo", asked=f"{controls.tempo} BPM", found="none",
                       honoured=False, line=line, source=source,
                       message=f"the tune gives no tempo; write Q:{written} in the header")
    in_beats = quarters / float(beat * 4)
    return Verdict(
        control="tempo", asked=f"{controls.tempo} BPM", found=f"{in_beats:g} BPM",
        honoured=abs(in_beats - controls.tempo) <= TEMPO_TOLERANCE_BPM, line=line,
        source=source,
        message=f"{source} is {in_beats:g} beats of {_fraction(beat)} a minute; "
                f"{controls.tempo} were asked: write Q:{written}")


def _key_verdict(asked: Key, field: HeaderField | None) -> Verdict:
    line, source = _source(field)
    found: Key | None = None
    if field is not None:
        try:
            found = read_key(source[2:], parameters=True)
        except ControlError:
            found = None
    return Verdict(control="key", asked=asked.name, found=found.name if found else "none",
                   honoured=found is not None and found.same_as(asked), line=line,
                   source=source,
                   message=f"the tune is in {found.name if found else 'no key'}; {asked.name} "
                           f"was asked: write K:{asked.abc} and the music in that key")


def _instruments_verdict(asked: Sequence[int], found: Sequence[int]) -> Verdict:
    wrong = [f"V:{number} plays {_named(have)}, not {_named(want)}"
             for number, (want, have) in enumerate(zip(asked, found, strict=False), start=1)
             if want != have]
    missing = [f"V:{number} ({_named(want)}) is missing"
               for number, want in enumerate(asked[len(found):], start=len(found) + 1)]
    return Verdict(
        control="instruments", asked=", ".join(_named(p) for p in asked),
        found=", ".join(_named(p) for p in found) or "none",
        honoured=list(asked) == list(found[:len(asked)]) and len(found) >= len(asked),
        message="; ".join(wrong + missing) + ": write %%MIDI program N under each V: line")


def _named(program: int) -> str:
    return f"{program_name(program)} ({program})"
