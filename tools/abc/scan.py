"""A position-aware scan of ABC text: tunes, header fields, bars and their durations.

abc2midi and music21 both accept damage that makes a tune unusable (prose in the body, an unclosed
chord) or report it far from where it is. This scan knows where every bar starts, so its
diagnostics point at the damage in one line a model can act on.

Each diagnostic is in one of two tiers (see `img2music.tools.abc.check` for the whole list, which
also covers the text limits and the reference parser). The scan's **errors**, the conditions that
stop a tune from being read as its writer meant it, are exactly these:

- the header: no `K:` line, or a `K:` that names no key (`K:`, `K:Q`); an `M:` that is not a meter;
  an `L:` that is not a note length; a `V:` without a name; music before the `K:` line; a header
  line that is neither a field nor music (prose in the header); a tune without `X:` or with
  `X:` not on its first line;
- the body: music after a blank line (a blank line ends a tune); a chord `[` or inline field
  `[K:` not closed with `]`, a chord holding letters that are not notes (`[Am]`), grace notes
  `{` not closed with `}`, a chord symbol or annotation `"` or a `+decoration+` not closed on its
  line; an accidental with no note after it; a tuplet `(1` or `(10`; any other character that
  cannot stand in music (prose, `F#`, garbage);
- the whole: no notes at all (chord symbols are not played; a `%%MIDI drum` pattern alone is a
  fault); more notes or bars than the limits allow.

Everything else it reports is a **fault**: bars that do not fill the meter (or hold a whole
number of bars), voices of unequal length, unbalanced slurs, an empty chord `[]`, a lone `:` or
`!`, lines with no bar lines, no `T:` or `M:`, a meter with no note value (`M:2`), a key with a
word that is not a mode (`K:C pentatonic`), a field letter ABC does not define.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction

from img2music.tools.abc.diagnostics import Diagnostic, Severity

FIELD_LINE = re.compile(r"^([A-Zmrsw+]):(.*)$")
# Field letters of ABC 2.1; other capitals followed by a colon are a fault, never music.
KNOWN_FIELDS = set("ABCDFGHIKLMNOPQRSTUVWXZmrsw+")
KEY_TONIC = re.compile(r"^(?P<tonic>[A-Ga-g][#b]?)\s*(?P<word>[A-Za-z]*)(?P<rest>.*)$")
MODE_PREFIXES = ("m", "maj", "min", "ion", "aeo", "mix", "dor", "phr", "lyd", "loc", "exp")
CLEF_NAME = re.compile(r"^(?:treble|bass|alto|tenor|baritone|soprano|mezzo|perc|percussion|drum"
                       r"|tab|none)\d?(?:[+-]8)?$", re.IGNORECASE)
KEY_ACCIDENTAL = re.compile(r"^(?:\^{1,2}|_{1,2}|=)[A-Ga-g]$")
METER_VALUE = re.compile(r"^\s*(?:(?P<common>C\|?)|(?P<free>none)|\(?(?P<num>\d+(?:\+\d+)*)\)?"
                         r"(?:/(?P<den>\d+))?)\s*$")
QUOTED = re.compile(r'"([^"]*)"')
TEMPO_VALUE = re.compile(r"^(?:(?P<beats>(?:\d+/[1-9]\d*\s*)+)=\s*)?(?P<pulse>\d+)$")
UNIT_VALUE = re.compile(r"^\s*(\d+)/(\d+)\s*$")
VOICE_ID = re.compile(r"^\s*([^\s=\]]+)(?:\s+.*)?$")
LENGTH = re.compile(r"(\d*)(/*)(\d*)")
MICROTONE = re.compile(r"\d*/\d*|\d+")
BAR_TOKEN = re.compile(r"\.?(?::*\|+\]?:*|:{2,})")
ENDING = re.compile(r"\[?\d+(?:[,-]\d+)*")
DEFAULT_DECORATIONS = set(".~HLMOPSTuv")
USER_DECORATION_LETTERS = set("HIJKLMNOPQRSTUVWYhijklmnopqrstuvw")
NOTE_LETTERS = set("ABCDEFGabcdefg")
DECORATED = NOTE_LETTERS | set("^_=[({\"!.~zxHIJKLMNOPQRSTUVWYhijklmnopqrstuvw")
DECORATION_NAME = re.compile(r"^[A-Za-z0-9().<>+\-/]+$")
IGNORED_SYMBOLS = set(" \t`$*")
MAX_DIAGNOSTICS_PER_TUNE = 40
MAX_CLASSIFIED_CHARS = 2_000
MARKUP_WINDOW = 4 * MAX_CLASSIFIED_CHARS  # where markup is removed before the cut
# An inline field is short; bounding it keeps the search linear on a line of unclosed `[K:`.
MUSIC_MARKUP = re.compile(r'"[^"]*"|![^!\s]*!|\+[^+\s]*\+|\[[A-Za-z]:[^\]]{0,200}\]')
PROSE_LETTERS = re.compile(r"[hijklmnopqrstw]")
PLAIN_WORD = re.compile(r"^[A-Za-z]{2,}[.,;!?]?$")
OCTAVE_DOWN_WORD = re.compile(r"^[A-Ga-g]+,$")  # notes whose last is an octave lower (DDB,)
TEXT_BLOCK_START, TEXT_BLOCK_END = "%%begintext", "%%endtext"
DRUMS_ON = re.compile(r"^%%MIDI\s+drumon\b")
# Sections as the compose prompt asks for them (`% [A]` lines), voices, and where a tune ends
# (a blank line; a Markdown fence ends the block the model wrote it in).
SECTION_MARK = re.compile(r"^[ \t]*%[ \t]*\[([^\]\n]+)\]", re.MULTILINE)
VOICE_MARK = re.compile(r"^[ \t]*(?:V:[ \t]*([^\s\]]+)|\[V:[ \t]*([^\s\]]+))", re.MULTILINE)
KEY_LINE = re.compile(r"^[ \t]*K:", re.MULTILINE)
TUNE_END = re.compile(r"^[ \t]*(?:```.*)?$", re.MULTILINE)


Span = tuple[str, int, int]
"""A named range of the text: (name, start, end), in characters, end exclusive."""


@dataclass
class HeaderField:
    letter: str
    value: str
    line: int


@dataclass
class Bar:
    """One bar of one voice; `duration` and `expected` are in whole notes."""

    voice: str
    number: int
    line: int
    col: int
    duration: Fraction
    expected: Fraction | None
    meter: str
    unit: Fraction
    start_boundary: bool
    end_boundary: bool = False
    multirest: int = 0
    checked: bool = True


@dataclass
class ScannedTune:
    first_line: int
    last_line: int
    header: list[HeaderField] = field(default_factory=list)
    body_lines: list[int] = field(default_factory=list)
    voices: list[str] = field(default_factory=list)
    bars: list[Bar] = field(default_factory=list)
    notes: int = 0
    duration: Fraction = Fraction(0)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    found: Counter[str] = field(default_factory=Counter)  # every diagnostic, kept or not

    def field_value(self, letter: str) -> str | None:
        return next((f.value.strip() for f in self.header if f.letter == letter), None)

    @property
    def bar_count(self) -> int:
        """Bars of the longest voice, a multi-bar rest counted as its bars."""
        per_voice: dict[str, int] = {}
        for bar in self.bars:
            per_voice[bar.voice] = per_voice.get(bar.voice, 0) + max(bar.multirest, 1)
        return max(per_voice.values(), default=0)


@dataclass
class ScannedText:
    tunes: list[ScannedTune]
    diagnostics: list[Diagnostic]
    lines: list[str]


def is_field_line(line: str) -> bool:
    return FIELD_LINE.match(line) is not None and not line.startswith("|")


def first_field(text: str, letter: str) -> str | None:
    """The value of the text's first `letter:` field line (`T` for the title), stripped."""
    for line in text.split("\n"):
        match = FIELD_LINE.match(line)
        if match and match[1] == letter:
            return match[2].strip()
    return None


def is_music_line(line: str) -> bool:
    """True for a line of ABC music, False for prose, fields, comments and blank lines.

    Prose is told apart by words made of letters that cannot stand in music outside quotes and
    decorations, or by a run of plain words ending in punctuation; a model's motivation paragraph
    is never mistaken for a tune. Only the first `MAX_CLASSIFIED_CHARS` outside markup (within
    the first `MARKUP_WINDOW` characters) are looked at.
    """
    stripped = _strip_comment(line[:MARKUP_WINDOW]).strip()
    if not stripped or is_field_line(stripped):
        return False
    if stripped.startswith(("#", "* ", "- ", "> ", "```", "~~~", "**")):
        return False
    # Markup goes before the cut, so a long line is never cut inside a decoration or quote;
    # it leaves nothing behind, so a staccato dot before !trill! never ends a word.
    bare = MUSIC_MARKUP.sub("", stripped)[:MAX_CLASSIFIED_CHARS]
    if any(char.isalpha() and not char.isascii() for char in bare):
        return False  # prose in another script (Chinese, Japanese, Cyrillic...) or accents
    if any(PROSE_LETTERS.search(word) for word in re.findall(r"[A-Za-z]{2,}", bare)):
        return False
    words = bare.split()
    plain_words = [word for word in words if PLAIN_WORD.match(word)]
    if len(plain_words) >= 3 and any(word[-1] in ".;!?" or (word[-1] == "," and
                                     not OCTAVE_DOWN_WORD.match(word)) for word in plain_words):
        return False
    return re.search(r"[A-Ga-gzxZ]", bare) is not None


def parse_length(text: str) -> tuple[Fraction, int]:
    """An ABC note-length suffix (`3`, `/`, `//`, `3/2`) as a multiplier, and its size in chars."""
    match = LENGTH.match(text)
    assert match is not None  # the pattern matches the empty string
    numerator_text, slashes, denominator_text = match.groups()
    numerator = int(numerator_text) if numerator_text else 1
    if denominator_text:
        denominator = int(denominator_text) * 2 ** max(len(slashes) - 1, 0)
    else:
        denominator = 2 ** len(slashes)
    if denominator == 0:
        return Fraction(numerator), match.end()
    return Fraction(numerator, denominator), match.end()


def meter_length(value: str) -> tuple[Fraction | None, bool]:
    """Bar length in whole notes (None for free meter, or a count with no note value such as
    `M:2`, which players read in different ways) and whether the value was understood."""
    match = METER_VALUE.match(value)
    if match is None:
        return None, False
    if match["common"]:
        return (Fraction(1) if match["common"] == "C" else Fraction(2, 2)), True
    if match["free"] or match["den"] is None:
        return None, True
    if int(match["den"]) == 0:
        return None, False  # a note value of 1/0 is no note value
    numerator = sum(int(part) for part in match["num"].split("+"))
    return Fraction(numerator, int(match["den"])), True


def tempo_of(value: str) -> tuple[int | None, int]:
    """A Q: value's quarter-note bpm (None when it names none) and its pulse as written (beats
    a minute): "3/8=60" → (90, 60), "120" → (120, 120); quoted words are left aside."""
    text = QUOTED.sub(" ", value.removeprefix("Q:")).strip()
    match = TEMPO_VALUE.match(re.sub(r"\s*=\s*", "=", text))
    if match is None:
        return None, 0
    pulse = int(match["pulse"])
    if not match["beats"]:
        return pulse or None, pulse
    beat = sum((Fraction(part) for part in match["beats"].split()), Fraction(0))
    bpm = round(pulse * beat * 4)
    return bpm or None, pulse


def default_unit(meter: Fraction | None) -> Fraction:
    return Fraction(1, 16) if meter is not None and meter < Fraction(3, 4) else Fraction(1, 8)


def is_mode(word: str) -> bool:
    """ABC reads a mode by its first three letters: `m`, `maj`, `Minor`, `Dorian`, `mix`..."""
    word = word.lower()
    return word == "m" or word[:3] in MODE_PREFIXES


def is_key_parameter(token: str) -> bool:
    """What may follow the key: `clef=bass`, `middle=d`, a clef name, explicit accidentals."""
    return ("=" in token[1:] or CLEF_NAME.match(token) is not None
            or KEY_ACCIDENTAL.match(token) is not None)


def key_problem(value: str) -> tuple[Severity, str] | None:
    """What is wrong with a `K:` value, in its tier: no tonic is an error (the notes' pitches
    are unknown); a word that is not a mode is a fault (players ignore it and read the tonic's
    major key)."""
    text = value.split("%", 1)[0].strip()
    example = "e.g. K:C, K:Am or K:D dorian (K:none for no key signature)"
    if not text:
        return "error", f"K: names no key; write the key, {example}"
    tokens = text.split()
    if text in ("none", "HP", "Hp") or all(is_key_parameter(token) for token in tokens):
        return None
    match = KEY_TONIC.match(text)
    if match is None:
        return "error", f"K:{text} is not a known key; use a tonic A-G with optional # or b " \
                        "and a mode, " + example
    tonic = match["tonic"]
    after = text[len(tonic):]
    glued = re.match(r"[A-Za-z]+", after)  # Am, Gmaj, Dmix=c
    words = ([glued.group()] if glued else []) + after[glued.end() if glued else 0:].split()
    mode = words.pop(0) if words and is_mode(words[0]) else "major"
    unknown = [word for word in words if not is_key_parameter(word)]
    if not unknown:
        return None
    return "fault", (f"K:{text}: {' '.join(unknown)!r} is not an ABC mode, so players read the "
                     f"key as {tonic} {mode}; write K:{tonic}{'' if mode == 'major' else mode} "
                     "or use a mode ABC knows (maj, min, dor, phr, lyd, mix, aeo, loc)")


def in_common_units(unit: Fraction, *values: Fraction) -> list[str]:
    """Durations over one denominator, at least the unit's, so they compare at a glance."""
    denominator = math.lcm(unit.denominator, *(value.denominator for value in values))
    return [f"{value.numerator * denominator // value.denominator}/{denominator}"
            for value in values]


def split_tunes(lines: list[str]) -> list[tuple[int, int]]:
    """(first, last) 0-based line ranges of the tunes; text with a K: but no X: is one tune."""
    starts = [i for i, line in enumerate(lines) if line.startswith("X:")]
    if not starts:
        has_key = any(line.startswith("K:") for line in lines)
        has_music = any(is_music_line(line) for line in lines)
        return [(0, len(lines) - 1)] if has_key or has_music else []
    ranges = []
    for index, start in enumerate(starts):
        end = starts[index + 1] - 1 if index + 1 < len(starts) else len(lines) - 1
        ranges.append((start, end))
    return ranges


class _VoiceState:
    def __init__(self, name: str, meter: Fraction | None, meter_text: str, unit: Fraction) -> None:
        self.name = name
        self.meter = meter
        self.meter_text = meter_text
        self.unit = unit
        self.unit_set = False
        self.bar_duration = Fraction(0)
        self.bar_has_music = False
        self.bar_line = 0
        self.bar_col = 0
        self.bar_multirest = 0
        self.overlay_durations: list[Fraction] = []
        self.line_end_split: Fraction | None = None
        self.bar_lines_on_line = 0
        self.unchecked = False
        self.after_split: tuple[int, int] | None = None
        self.start_boundary = True
        self.bars: list[Bar] = []
        self.tuplet_left = 0
        self.tuplet_ratio = Fraction(1)
        self.slurs: list[tuple[int, int]] = []


class _TuneScanner:
    def __init__(self, lines: list[str], first: int, last: int, *, max_notes: int,
                 max_bars: int) -> None:
        self.lines = lines
        self.tune = ScannedTune(first_line=first + 1, last_line=last + 1)
        self.first, self.last = first, last
        self.max_notes, self.max_bars = max_notes, max_bars
        self.meter: Fraction | None = None
        self.meter_text = "none"
        self.unit: Fraction | None = None
        self.voices: dict[str, _VoiceState] = {}
        self.voice: _VoiceState | None = None
        self.user_decorations: set[str] = set()
        self.key_anywhere = any(line.startswith("K:") for line in lines[first:last + 1])
        self.bare_lines: list[int] = []
        self.text_lines = _text_block_lines(lines, first, last)
        self.drums = any(DRUMS_ON.match(line) for line in lines[first:last + 1])
        self.repeats = False

    def report(self, severity: Severity, line: int, col: int, message: str) -> None:
        """Keep the first diagnostics of each tier, and count them all: many faults never hide
        an error, and the count of faults is exact."""
        self.tune.found[severity] += 1
        if self.tune.found[severity] > MAX_DIAGNOSTICS_PER_TUNE:
            return
        source = self.lines[line - 1] if 0 < line <= len(self.lines) else ""
        self.tune.diagnostics.append(
            Diagnostic(severity=severity, line=line, col=col, message=message, source=source)
        )

    def scan(self) -> ScannedTune:
        body_start = self.scan_header()
        if body_start is not None:
            self.scan_body(body_start)
        self.finish()
        return self.tune

    def scan_header(self) -> int | None:
        """Read header fields up to K:; returns the 0-based index of the first body line."""
        tune, lines = self.tune, self.lines
        if not lines[self.first].startswith("X:"):
            self.report("error", self.first + 1, 1,
                        "the tune has no X: line; X: (reference number) must be its first line")
        continued = False
        for index in range(self.first, self.last + 1):
            line = lines[index]
            if not line.strip():
                if any(f.letter == "K" for f in tune.header):
                    return index
                continue
            if line.startswith("%") or index in self.text_lines or continued:
                continued = continued and _continues(line)
                continue
            match = FIELD_LINE.match(line)
            continued = match is not None and _continues(line)
            if match is None:
                if is_music_line(line):
                    if self.key_anywhere:
                        self.report("error", index + 1, 1,
                                    "music before the K: field; K: (key) must end the header")
                    self.check_header_fields(index + 1)
                    return index
                self.report("error", index + 1, 1,
                            "this line is neither a header field nor music")
                continue
            letter, value = match.group(1), match.group(2)
            if letter == "X" and index != self.first:
                self.report("error", index + 1, 1, "X: must be the first line of a tune")
            tune.header.append(HeaderField(letter, value, index + 1))
            if letter == "K":
                self.check_header_fields(index + 1)
                return index + 1
        self.check_header_fields(self.last + 1)
        return None

    def check_header_fields(self, header_end_line: int) -> None:
        tune = self.tune
        x_value = tune.field_value("X")
        if x_value is not None and not x_value.isdigit():
            line = next(f.line for f in tune.header if f.letter == "X")
            self.report("fault", line, 3, f"X:{x_value} should be a number, e.g. X:1")
        if tune.field_value("T") is None:
            self.report("fault", tune.first_line, 1, "the tune has no T: (title) field")
        for header_field in tune.header:
            self.apply_field(header_field.letter, header_field.value, header_field.line, 1)
        if tune.field_value("M") is None:
            self.report("fault", tune.first_line, 1,
                        "no M: (meter) field, so the meter is free and bar lengths are not "
                        "checked; add one, e.g. M:4/4")
        if not self.key_anywhere:
            self.report("error", header_end_line, 1,
                        "no K: (key) field; add one as the last header line, before the music, "
                        "e.g. K:C or K:Am")
        self.unit = self.unit or default_unit(self.meter)

    def apply_field(self, letter: str, value: str, line: int, col: int) -> None:
        """Act on a field in the header, the body, or inline `[L:…]`."""
        value = value.split("%", 1)[0].strip()
        if letter not in KNOWN_FIELDS:
            self.report("fault", line, col,
                        f"{letter}: is not an ABC field, so players skip it; remove it or write "
                        "it as a comment (% ...)")
        elif letter == "K":
            problem = key_problem(value)
            if problem is not None:
                self.report(problem[0], line, col, problem[1])
        elif letter == "M":
            meter, understood = meter_length(value)
            if not understood:
                self.report("error", line, col,
                            f"M:{value} is not a meter; use e.g. M:4/4, M:6/8, M:C or M:none")
                return
            if meter is None and value != "none":
                self.report("fault", line, col,
                            f"M:{value} gives no note value, so bar lengths are not checked; "
                            f"write e.g. M:{value}/4 or M:{value}/2")
            if self.voice is None:  # the header's, or the body's before any voice
                self.meter, self.meter_text = meter, value
            else:  # a change inside a voice is that voice's
                self.voice.meter, self.voice.meter_text = meter, value
                if not self.voice.unit_set and self.unit is None:
                    self.voice.unit = default_unit(meter)
        elif letter == "L":
            match = UNIT_VALUE.match(value)
            if match is None or int(match.group(2)) == 0 or int(match.group(1)) == 0:
                self.report("error", line, col,
                            f"L:{value} is not a note length; use e.g. L:1/8 or L:1/4")
                return
            unit = Fraction(int(match.group(1)), int(match.group(2)))
            if self.voice is None:
                self.unit = unit
            else:
                self.voice.unit, self.voice.unit_set = unit, True
        elif letter == "V":
            match = VOICE_ID.match(value)
            if match is None:
                self.report("error", line, col,
                            "V: needs a voice name, e.g. V:1 or V:melody clef=treble")
                return
            if self.voice is not None or any(f.letter == "K" for f in self.tune.header):
                self.switch_voice(match.group(1))
        elif letter == "U":
            symbol = value.split("=", 1)[0].strip()
            if len(symbol) == 1:
                self.user_decorations.add(symbol)

    def switch_voice(self, name: str) -> None:
        if name not in self.voices:
            unit = self.unit or default_unit(self.meter)
            self.voices[name] = _VoiceState(name, self.meter, self.meter_text, unit)
            self.tune.voices.append(name)
        self.voice = self.voices[name]

    def current_voice(self) -> _VoiceState:
        if self.voice is None:
            declared = [f.value for f in self.tune.header if f.letter == "V"]
            first = VOICE_ID.match(declared[0]) if declared else None
            self.switch_voice(first.group(1) if first else "1")
        assert self.voice is not None
        return self.voice

    def scan_body(self, start: int) -> None:
        blank_seen = False
        for index in range(start, self.last + 1):
            line, number = self.lines[index], index + 1
            if not line.strip():
                blank_seen = True
                continue
            if blank_seen:
                if is_music_line(line):
                    self.report("error", number, 1,
                                "music after a blank line; a blank line ends a tune in ABC, "
                                "so remove blank lines inside the tune")
                continue
            if line.startswith("%") or index in self.text_lines:
                continue
            match = FIELD_LINE.match(line)
            if match is not None:
                if match.group(1) not in "wW+":
                    self.apply_field(match.group(1), match.group(2), number, 1)
                continue
            self.tune.body_lines.append(number)
            self.scan_music_line(line, number)

    def scan_music_line(self, line: str, number: int) -> None:
        voice = self.current_voice()
        voice.bar_lines_on_line = 0
        text = _strip_comment(line)
        position = 0
        continued = text.rstrip().endswith("\\")
        while position < len(text):
            char = text[position]
            col = position + 1
            if char in IGNORED_SYMBOLS or char == "\\":
                position += 1
            elif char == '"':
                end = text.find('"', position + 1)
                if end < 0:
                    self.report("error", number, col,
                                'a chord symbol or annotation opened with " is not closed on '
                                "this line")
                    return
                position = end + 1
            elif char in "!+":
                end = text.find(char, position + 1)
                if end < 0 or not DECORATION_NAME.match(text[position + 1:end]):
                    if char == "!":
                        self.report("fault", number, col,
                                    "a lone ! is read as an old-style line break; write "
                                    "decorations as !name!, e.g. !trill!")
                        position += 1
                        continue
                    self.report("error", number, col,
                                "a decoration opened with + is not closed; write e.g. +trill+")
                    return
                position = end + 1
            elif char == "[":
                position = self.scan_bracket(text, position, number)
                voice = self.current_voice()
            elif char in "|:" or (char == "." and text[position + 1:position + 2] == "|"):
                position = self.scan_bar(text, position, number)
            elif char == "(":
                position = self.scan_paren(text, position, number)
            elif char == ")":
                if not voice.slurs:
                    self.report("fault", number, col,
                                "a slur is closed with ) but was never opened with (")
                else:
                    voice.slurs.pop()
                position += 1
            elif char == "{":
                end = text.find("}", position + 1)
                if end < 0:
                    self.report("error", number, col,
                                "grace notes opened with { are not closed with } on this line")
                    return
                position = end + 1
            elif char in "-<>&" or char in "yY":
                if char == "&":
                    voice.overlay_durations.append(voice.bar_duration)
                    voice.bar_duration = Fraction(0)
                position += 1
            elif char in "^_=" or char in NOTE_LETTERS or char in "zx":
                position = self.scan_note(text, position, number)
            elif char in "ZX":
                length, size = parse_length(text[position + 1:])
                self.mark_music(voice, number, col)
                voice.bar_multirest = int(length) if length.denominator == 1 else 1
                position += 1 + size
            elif self.is_decoration(char, text[position + 1:position + 2]):
                position += 1
            elif char == "#" and text[position - 1:position] in NOTE_LETTERS:
                note = text[position - 1]
                self.report("error", number, col - 1,
                            f"{note}# is not ABC: a sharp goes before its note, ^{note} (a flat "
                            f"_{note}, a natural ={note})")
                return
            else:
                shown = char if char.isprintable() else repr(char)
                self.report("error", number, col,
                            f"unexpected {shown!s} in the music; is this line prose or a "
                            "broken note?")
                return
        if not continued:
            self.soft_bar_end(voice, number)

    def is_decoration(self, char: str, following: str) -> bool:
        """Shorthand decorations, and letters a transcriber may have defined with `U:`."""
        if char in DEFAULT_DECORATIONS or char in self.user_decorations:
            return True
        return char in USER_DECORATION_LETTERS and (char.isupper() or following in DECORATED)

    def mark_music(self, voice: _VoiceState, line: int, col: int) -> None:
        if not voice.bar_has_music:
            voice.bar_has_music = True
            voice.bar_line, voice.bar_col = line, col
        elif voice.line_end_split is not None and voice.after_split is None:
            voice.after_split = (line, col)

    def scan_note(self, text: str, position: int, number: int) -> int:
        """A note or rest with accidentals, octave marks and length; returns the next position."""
        voice = self.current_voice()
        start = position
        while position < len(text) and text[position] in "^_=":
            position += 1
        microtone = MICROTONE.match(text, position) if position > start else None
        if microtone is not None and text[start] in "^_":  # ^/c, _3/4e: ABC 2.1 microtones
            position = microtone.end()
        if position >= len(text) or text[position] not in NOTE_LETTERS | set("zx"):
            self.report("error", number, start + 1,
                        "an accidental (^, _ or =) needs a note after it")
            return len(text)
        is_rest = text[position] in "zx"
        position += 1
        while position < len(text) and text[position] in ",'":
            position += 1
        length, size = parse_length(text[position:])
        position += size
        self.mark_music(voice, number, start + 1)
        self.add_duration(voice, voice.unit * length)
        if not is_rest:
            self.tune.notes += 1
        return position

    def add_duration(self, voice: _VoiceState, duration: Fraction) -> None:
        if voice.tuplet_left > 0:
            duration *= voice.tuplet_ratio
            voice.tuplet_left -= 1
        voice.bar_duration += duration

    def scan_bracket(self, text: str, position: int, number: int) -> int:
        """`[K:…]` inline fields, `[1` endings, `[|` bar lines, and `[CEG]` chords."""
        voice = self.current_voice()
        rest = text[position + 1:]
        inline = re.match(r"([A-Za-z]):([^\]]*)\]", rest)
        if inline:
            self.apply_field(inline.group(1), inline.group(2), number, position + 1)
            return position + 1 + inline.end()
        if re.match(r"[A-Za-z]:", rest):
            self.report("error", number, position + 1,
                        "an inline field opened with [ is not closed with ]")
            return len(text)
        if rest[:1].isdigit():
            ending = ENDING.match(text, position)
            assert ending is not None
            self.mark_boundary(voice)
            self.repeats = True
            return ending.end()
        if rest.startswith("|"):
            return self.scan_bar(text, position + 1, number, boundary=True)
        end = position + 1
        notes_in_chord = 0
        first_length: Fraction | None = None
        stray_letter: str | None = None
        while end < len(text) and text[end] != "]":
            char = text[end]
            if char in "|[ \t":
                break
            if char in "!\"" and text.find(char, end + 1) > 0:
                end = text.find(char, end + 1) + 1  # a decoration or annotation on a chord note
                continue
            if char.isalpha() and char not in NOTE_LETTERS and not self.is_decoration(char, ""):
                stray_letter = stray_letter or char
            if char in NOTE_LETTERS:
                notes_in_chord += 1
                end += 1
                while end < len(text) and text[end] in ",'":
                    end += 1
                length, size = parse_length(text[end:])
                first_length = length if first_length is None else first_length
                end += size
                continue
            end += 1
        if end >= len(text) or text[end] != "]":
            self.report("error", number, position + 1,
                        "a chord opened with [ is not closed with ] before the next space, bar "
                        "line or chord")
            return len(text)
        if stray_letter is not None:
            name = text[position + 1:end]
            self.report("error", number, position + 1,
                        f"[{name}] is not a chord of notes ({stray_letter} is not a note); a "
                        f'chord name goes in quotes before a note, e.g. "{name}"{name[0]}2, and '
                        f"a chord of notes in brackets, e.g. [CEG]")
            return end + 1
        if notes_in_chord == 0:
            self.report("fault", number, position + 1,
                        "an empty chord [] holds no notes; remove it")
            return end + 1
        outer, size = parse_length(text[end + 1:])
        self.mark_music(voice, number, position + 1)
        self.add_duration(voice, voice.unit * (first_length or Fraction(1)) * outer)
        self.tune.notes += notes_in_chord
        return end + 1 + size

    def scan_paren(self, text: str, position: int, number: int) -> int:
        voice = self.current_voice()
        tuplet = re.match(r"\((\d+)(?::(\d*))?(?::(\d*))?", text[position:])
        if tuplet is None:
            voice.slurs.append((number, position + 1))
            return position + 1
        p = int(tuplet.group(1))
        if p < 2 or p > 9:
            self.report("error", number, position + 1,
                        f"({p} is not a tuplet; use (2 to (9, e.g. (3abc for a triplet")
            return position + tuplet.end()
        compound = self.meter is not None and self.meter.numerator % 3 == 0 and \
            self.meter.numerator > 3
        default_q = {2: 3, 3: 2, 4: 3, 6: 2, 8: 3}.get(p, 3 if compound else 2)
        q = int(tuplet.group(2)) if tuplet.group(2) else default_q
        r = int(tuplet.group(3)) if tuplet.group(3) else p
        voice.tuplet_left, voice.tuplet_ratio = r, Fraction(q, p)
        return position + tuplet.end()

    def scan_bar(self, text: str, position: int, number: int, *, boundary: bool = False) -> int:
        voice = self.current_voice()
        match = BAR_TOKEN.match(text, position)
        if match is None or match.end() == position:
            self.report("fault", number, position + 1,
                        "a lone : is read as a repeat sign; write :| or |:")
            self.mark_boundary(voice)
            return position + 1
        token = match.group(0)
        end = match.end()
        ending = re.match(r"\d+(?:[,-]\d+)*", text[end:])
        is_boundary = boundary or ":" in token or "||" in token or "]" in token or bool(ending)
        if ending:
            end += ending.end()
        self.repeats = self.repeats or ":" in token or bool(ending)
        voice.bar_lines_on_line += 1
        self.close_bar(voice, is_boundary)
        return end

    def mark_boundary(self, voice: _VoiceState) -> None:
        if voice.bars and not voice.bar_has_music:
            voice.bars[-1].end_boundary = True
        voice.start_boundary = True

    def close_bar(self, voice: _VoiceState, boundary: bool) -> None:
        if voice.overlay_durations:
            voice.bar_duration = max([voice.bar_duration, *voice.overlay_durations])
            voice.overlay_durations = []
        if not voice.bar_has_music:
            if boundary:
                self.mark_boundary(voice)
            return
        expected = voice.meter
        duration = voice.bar_duration
        if voice.bar_multirest and expected is not None:
            duration = expected * voice.bar_multirest
        split, after = voice.line_end_split, voice.after_split
        if (expected is not None and duration > expected and split is not None
                and after is not None and duration - split <= expected):
            self.append_bar(voice, split, end_boundary=True)
            voice.bar_line, voice.bar_col = after
            voice.start_boundary = True
            duration -= split
        elif split is not None and after is not None:
            voice.start_boundary = True
        self.append_bar(voice, duration, end_boundary=boundary)

    def append_bar(self, voice: _VoiceState, duration: Fraction, *, end_boundary: bool) -> None:
        expected = voice.meter
        voice.bars.append(Bar(
            voice=voice.name, number=len(voice.bars) + 1, line=voice.bar_line,
            col=voice.bar_col, duration=duration,
            expected=expected * max(voice.bar_multirest, 1) if expected is not None else None,
            meter=voice.meter_text, unit=voice.unit, start_boundary=voice.start_boundary,
            end_boundary=end_boundary, multirest=voice.bar_multirest,
            checked=not voice.unchecked,
        ))
        voice.unchecked = False
        voice.bar_duration = Fraction(0)
        voice.bar_has_music = False
        voice.bar_multirest = 0
        voice.start_boundary = end_boundary
        voice.line_end_split = voice.after_split = None

    def soft_bar_end(self, voice: _VoiceState, number: int) -> None:
        """Line ends where a bar line is missing, as Essen and older transcriptions write phrases.

        A line that ends on a full bar closes it as a phrase end; a line that ends mid-bar is
        remembered, so that a bar running on past its length can be split there.
        """
        if not voice.bar_has_music or voice.meter is None:
            return
        if voice.bar_lines_on_line == 0 and voice.bar_duration != voice.meter:
            voice.unchecked = True
            self.bare_lines.append(number)
        if voice.bar_duration == voice.meter:
            self.close_bar(voice, boundary=True)
        elif voice.bar_duration < voice.meter:
            voice.line_end_split, voice.after_split = voice.bar_duration, None

    def finish(self) -> None:
        tune = self.tune
        for voice in self.voices.values():
            if voice.bar_has_music:
                self.close_bar(voice, boundary=True)
            for line, col in voice.slurs:
                self.report("fault", line, col, "a slur opened with ( is never closed with )")
            tune.bars.extend(voice.bars)
            self.check_bars(voice.bars)
        if self.bare_lines:
            lines = ", ".join(str(line) for line in self.bare_lines[:8])
            self.report("fault", self.bare_lines[0], 1,
                        f"no bar lines on line(s) {lines}, so bar lengths there are not checked")
        lengths = {name: sum((bar.duration for bar in voice.bars), Fraction(0))
                   for name, voice in self.voices.items() if voice.bars}
        tune.duration = max(lengths.values(), default=Fraction(0))
        if len(lengths) > 1 and not self.repeats:
            self.check_voice_lengths(lengths)
        if tune.body_lines and tune.notes == 0 and not tune.found["error"]:
            if self.drums:
                self.report("fault", tune.body_lines[0], 1,
                            "the tune has no written notes, only a %%MIDI drum pattern; write "
                            "the melody as notes")
            else:
                self.report("error", tune.body_lines[0], 1, "the tune has no notes")
        elif not tune.body_lines and tune.field_value("K") is not None:
            self.report("error", tune.last_line, 1, "the tune has no music after its K: line")
        if tune.notes > self.max_notes:
            self.report("error", tune.first_line, 1,
                        f"the tune has {tune.notes} notes; the limit is {self.max_notes}")
        if tune.bar_count > self.max_bars:
            self.report("error", tune.first_line, 1,
                        f"the tune has {tune.bar_count} bars; the limit is {self.max_bars}")

    def check_voice_lengths(self, lengths: dict[str, Fraction]) -> None:
        """Voices that stop before the others leave the rest of the tune to them alone."""
        longest = max(lengths, key=lambda name: lengths[name])
        full = lengths[longest]
        for name, length in lengths.items():
            if length < full:
                last = self.voices[name].bars[-1]
                self.report("fault", last.line, last.col,
                            f"voice {name} lasts {float(length * 4):g} beats but voice {longest} "
                            f"lasts {float(full * 4):g}; voices should end together, so add the "
                            "missing bars or rests")

    def check_bars(self, bars: list[Bar]) -> None:
        for index, bar in enumerate(bars):
            if bar.expected is None or bar.duration == bar.expected or not bar.checked:
                continue
            shown, needed, gap = in_common_units(
                bar.unit, bar.duration, bar.expected, abs(bar.duration - bar.expected)
            )
            where = f"bar {bar.number}" + (f" of voice {bar.voice}" if len(self.voices) > 1 else "")
            if bar.duration > bar.expected and bar.duration % bar.expected == 0:
                self.report("fault", bar.line, bar.col,
                            f"{where} lasts {shown}, {bar.duration / bar.expected} bars of "
                            f"M:{bar.meter}; a bar line is missing")
                continue
            if bar.duration > bar.expected:
                self.report("fault", bar.line, bar.col,
                            f"{where} lasts {shown} but M:{bar.meter} bars last {needed} "
                            f"({gap} too long)")
                continue
            is_edge = index == 0 or index == len(bars) - 1
            if is_edge or bar.start_boundary or bar.end_boundary or _completes_split_bar(
                bars, index
            ):
                continue
            self.report("fault", bar.line, bar.col,
                        f"{where} lasts {shown} but M:{bar.meter} bars last {needed} "
                        f"({gap} short; only first, last and repeat-side bars may be short)")


def _completes_split_bar(bars: list[Bar], index: int) -> bool:
    """A short bar whose neighbour makes up the rest: a phrase that ends mid-bar."""
    bar = bars[index]
    assert bar.expected is not None
    neighbours = [bars[i] for i in (index - 1, index + 1) if 0 <= i < len(bars)]
    return any(other.expected == bar.expected and other.duration + bar.duration == bar.expected
               for other in neighbours)


def _continues(line: str) -> bool:
    """A field line ending in a backslash goes on on the next line (ABC 2.1, 3.2)."""
    return _strip_comment(line).rstrip().endswith("\\")


def _text_block_lines(lines: list[str], first: int, last: int) -> set[int]:
    """Indices of `%%begintext` … `%%endtext` blocks: free text printed with the tune."""
    inside, found = False, set()
    for index in range(first, last + 1):
        if lines[index].startswith(TEXT_BLOCK_START):
            inside = True
        if inside:
            found.add(index)
        if lines[index].startswith(TEXT_BLOCK_END):
            inside = False
    return found


def _strip_comment(line: str) -> str:
    in_quotes = False
    for index, char in enumerate(line):
        if char == '"':
            in_quotes = not in_quotes
        elif char == "%" and not in_quotes and (index == 0 or line[index - 1] != "\\"):
            return line[:index]
    return line


def scan_abc(text: str, *, max_notes: int = 8_000, max_bars: int = 1_500) -> ScannedText:
    """Scan normalised ABC text (LF line ends) into tunes with their diagnostics."""
    lines = text.split("\n")
    tunes = [
        _TuneScanner(lines, first, last, max_notes=max_notes, max_bars=max_bars).scan()
        for first, last in split_tunes(lines)
    ]
    diagnostics: list[Diagnostic] = []
    if not tunes:
        diagnostics.append(Diagnostic(
            severity="error", line=1 if lines else 0, col=1,
            message="no ABC tune found: a tune needs X:, a K: header line and notes",
        ))
    return ScannedText(tunes=tunes, diagnostics=diagnostics, lines=lines)


def sections_of(abc: str) -> list[Span]:
    """Character spans of the tune's `% [section]` blocks, or else of its `V:` voices.

    A span runs from its marker line to the next marker, a blank line (the end of an ABC tune)
    or a Markdown fence. Voice lines before the first `K:` only declare voices and are skipped;
    a voice written in several blocks gives several spans with one name (`V:1`).
    """
    markers = [(match.group(1).strip(), match.start()) for match in SECTION_MARK.finditer(abc)]
    if not markers:
        key = KEY_LINE.search(abc)
        body = key.end() if key else 0
        markers = [
            (f"V:{match.group(1) or match.group(2)}", match.start())
            for match in VOICE_MARK.finditer(abc, body)
        ]
    spans: list[Span] = []
    for index, (name, start) in enumerate(markers):
        limit = markers[index + 1][1] if index + 1 < len(markers) else len(abc)
        line_end = abc.find("\n", start)
        end = TUNE_END.search(abc, line_end + 1, limit) if 0 <= line_end < limit else None
        spans.append((name, start, end.start() if end else limit))
    return spans
