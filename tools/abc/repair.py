"""Mechanical repairs that are safe to make without the composer: each keeps every note the writer
meant, and each is reported.

A model that forgot `X:`, ran its header fields together on one line, spelled the key out
(`K: G major`), wrote accidentals as letters (`F#`), or chatted after its last bar wrote a tune
that is fine as music; fixing those here saves a repair round-trip to the model. What is not
mechanical (a missing key, a wrong bar) is left for the composer, and no repair invents or
deletes a complete note. The one exception is a tune the token limit cut off mid-bar: its
incomplete last bar is dropped, and the fix says so.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import BaseModel, Field

from img2music.tools.abc.check import normalise_abc
from img2music.tools.abc.scan import (
    FIELD_LINE,
    KEY_TONIC,
    NOTE_LETTERS,
    UNIT_VALUE,
    is_key_parameter,
    is_mode,
    is_music_line,
    key_problem,
    meter_length,
    scan_abc,
)

# Fields that mean the same above K: as between K: and the first note.
MOVABLE_FIELDS = set("TMLQCRONZSBDHAGF")
LAST_BAR_LINE = re.compile(r"^(.*(?:\|\]|\|\||:\||\|))(\s*)(.*)$")
# Fields a model runs together on one header line: "X:1 L:1/8 M:4/4 K:G", or a bare K at the end.
RUN_TOGETHER = re.compile(r"\s+(?=[XTMLQK]:)")
BARE_KEY = re.compile(r"\s+K\s*$")
TEMPO_VALUE = re.compile(r'^(?:\d+/\d+\s*=\s*)?\d+$|^"[^"]*"')
KEY_SPELLING = re.compile(
    r"^(?P<letter>[A-Ga-g])(?:(?P<sign>[#b♯♭])|[\s-]*(?P<word>sharp|flat)\b)?"
    r"\s*(?P<rest>.*)$", re.IGNORECASE)
SPELLED_OUT_KEY = re.compile(r"maj|min|♯|♭|sharp|flat", re.IGNORECASE)
MODE_NAMES = {"maj": "", "ion": "", "min": "m", "m": "m", "aeo": "m"}
CUT_EVIDENCE = ("not closed", "needs a note after it")
# Key signatures by the circle of fifths: the tonic's place, then the mode's shift from major.
FIFTHS = {"C": 0, "G": 1, "D": 2, "A": 3, "E": 4, "B": 5, "F": -1}
MODE_SHIFT = {"maj": 0, "ion": 0, "m": -3, "min": -3, "aeo": -3, "mix": -1, "dor": -2,
              "phr": -4, "lyd": 1, "loc": -5}
SHARPS_IN_ORDER = "FCGDAEB"


class Repair(BaseModel):
    abc: str
    fixes: list[str] = Field(default_factory=list, description="One line per change made.")
    notes: list[str] = Field(
        default_factory=list, description="Problems seen but left for the composer."
    )


def repair_abc(text: str, *, cut_off: bool = False) -> Repair:
    """Apply the safe fixes to the first tune in `text` and say what was done; `cut_off` says
    that the reply ended inside the tune (from `Extraction.cut_off`)."""
    fixes: list[str] = []
    normalised = normalise_abc(text)
    if normalised != text:
        fixes.append("converted CR/CRLF line ends to LF")
    lines = [line.rstrip() for line in normalised.split("\n")]
    lines = _drop_leading_prose(lines, fixes)
    lines = _split_run_together_fields(lines, fixes)
    lines = _put_x_first(lines, fixes)
    notes: list[str] = []
    key_index = next((i for i, line in enumerate(lines) if line.startswith("K:")), None)
    if key_index is None:
        notes.append("no K: field; the key is the composer's choice, so it is not guessed")
    else:
        lines = _move_fields_above_key(lines, key_index, fixes)
        lines = _drop_blank_lines_in_body(lines, fixes)
        lines = _drop_trailing_junk(lines, fixes)
        lines = _name_keys_plainly(lines, fixes)
        lines = _write_letter_accidentals_as_abc(lines, fixes)
        lines = _drop_cut_off_bar(lines, fixes, cut_off=cut_off)
    abc = "\n".join(lines).strip("\n") + "\n"
    return Repair(abc=abc, fixes=fixes, notes=notes)


def _drop_leading_prose(lines: list[str], fixes: list[str]) -> list[str]:
    start = next(
        (i for i, line in enumerate(lines) if FIELD_LINE.match(line) or is_music_line(line)),
        len(lines),
    )
    if any(line.strip() for line in lines[:start]):
        fixes.append(f"removed {start} line(s) of text before the tune")
    return lines[start:]


def _split_run_together_fields(lines: list[str], fixes: list[str]) -> list[str]:
    """`X:1 L:1/8 M:4/4 K` becomes one field per line; a bare K at the end becomes `K:`, whose
    missing key the checker then names (a key is never guessed)."""
    result: list[str] = []
    for index, line in enumerate(lines):
        if is_music_line(line):
            return [*result, *lines[index:]]
        pieces = _run_together(line) if FIELD_LINE.match(line) else None
        if pieces is None:
            result.append(line)
            continue
        fixes.append(f"split the header line {line.strip()[:60]!r} into one field per line")
        result.extend(pieces)
    return result


def _run_together(line: str) -> list[str] | None:
    """The fields of a header line that holds several, when each but a title has a value that
    could only be that field's (so `T:Song in C: a tale` stays one line)."""
    bare_key = BARE_KEY.search(line)
    pieces = RUN_TOGETHER.split(line[:bare_key.start()] if bare_key else line)
    strict = [piece for piece in pieces[1:] if piece[0] != "T"]
    if not strict or not all(_plausible_field(piece) for piece in strict):
        return None
    return [*pieces, "K:"] if bare_key else pieces


def _plausible_field(piece: str) -> bool:
    letter, value = piece[0], piece[2:].strip()
    checks: dict[str, Callable[[str], bool]] = {
        "X": str.isdigit,
        "M": lambda v: meter_length(v)[1],
        "L": lambda v: UNIT_VALUE.match(v) is not None,
        "Q": lambda v: TEMPO_VALUE.match(v) is not None,
        "K": lambda v: (key_problem(v) or ("fault", ""))[0] == "fault",
    }
    return checks[letter](value)


def _put_x_first(lines: list[str], fixes: list[str]) -> list[str]:
    x_index = next((i for i, line in enumerate(lines) if line.startswith("X:")), None)
    if x_index is None:
        fixes.append("added X:1, which must be the first line of a tune")
        return ["X:1", *lines]
    if x_index > 0 and all(FIELD_LINE.match(line) or not line for line in lines[:x_index]):
        fixes.append("moved X: to the first line, where it must be")
        return [lines[x_index], *lines[:x_index], *lines[x_index + 1:]]
    return lines


def _move_fields_above_key(lines: list[str], key_index: int, fixes: list[str]) -> list[str]:
    moved: list[str] = []
    index = key_index + 1
    while index < len(lines) and not is_music_line(lines[index]):
        match = FIELD_LINE.match(lines[index])
        if match and match.group(1) in MOVABLE_FIELDS:
            moved.append(lines.pop(index))
            continue
        index += 1
    for line in moved:
        fixes.append(f"moved {line.strip()} above K:, which must end the header")
    return [*lines[:key_index], *moved, *lines[key_index:]]


def _drop_blank_lines_in_body(lines: list[str], fixes: list[str]) -> list[str]:
    music = [i for i, line in enumerate(lines) if _music_part(line) is not None]
    if not music:
        return lines
    first, last = music[0], music[-1]
    blanks = [i for i in range(first, last) if not lines[i].strip()]
    if blanks:
        fixes.append(f"removed {len(blanks)} blank line(s) inside the tune (a blank line ends it)")
    dropped = set(blanks)
    return [line for i, line in enumerate(lines) if i not in dropped]


def _music_part(line: str) -> str | None:
    """The line if it is music, or its music up to the last bar line when chat follows that."""
    if is_music_line(line):
        return line
    match = LAST_BAR_LINE.match(line)
    return match.group(1) if match and is_music_line(match.group(1)) else None


def _drop_trailing_junk(lines: list[str], fixes: list[str]) -> list[str]:
    music = [i for i, line in enumerate(lines) if _music_part(line) is not None]
    if not music:
        return lines
    last = music[-1]
    tail = [line for line in lines[last + 1:] if line.strip()]
    kept_tail = [line for line in tail if line.startswith("%") or FIELD_LINE.match(line)]
    if len(kept_tail) < len(tail):
        fixes.append(f"removed {len(tail) - len(kept_tail)} line(s) of text after the last bar")
    music_part = _music_part(lines[last])
    assert music_part is not None
    if music_part != lines[last]:
        chat = lines[last][len(music_part):].strip()
        fixes.append(f"removed text after the last bar line: {chat[:40]!r}")
    return [*lines[:last], music_part, *kept_tail]


# --- keys -------------------------------------------------------------------------------------


def _name_keys_plainly(lines: list[str], fixes: list[str]) -> list[str]:
    """`K: G major` → `K:G`, `K:Amin` → `K:Am`, `K:B flat` → `K:Bb`, `K:C Pentatonic` → `K:C`:
    the same key signature, in the form every ABC reader knows."""
    result = []
    for line in lines:
        plain = plain_key(line[2:]) if line.startswith("K:") else None
        if plain is not None:
            fixes.append(f"wrote {line.strip()} as K:{plain}")
            line = f"K:{plain}"
        result.append(line)
    return result


def plain_key(value: str) -> str | None:
    """The standard spelling of a key a model spelled out, or None when it needs none (or is
    not a key at all, which is left for the checker to name)."""
    text = value.split("%", 1)[0].strip()
    problem = key_problem(text)
    if problem is not None and problem[0] == "error":
        return None
    if problem is None and not SPELLED_OUT_KEY.search(text):
        return None
    match = KEY_SPELLING.match(text)
    if match is None:
        return None
    tonic = spelled_tonic(match)
    words = match["rest"].split()
    mode = ""
    if words and is_mode(words[0]):
        word = words.pop(0).lower()
        mode = MODE_NAMES.get("m" if word == "m" else word[:3], word[:3])
    kept = [word for word in words if is_key_parameter(word)]
    plain = " ".join([tonic + mode, *kept])
    return plain if plain != text else None


def spelled_tonic(match: re.Match[str]) -> str:
    """The tonic a `KEY_SPELLING` match names, as ABC writes it: "f sharp" → "F#", "B♭" → "Bb"."""
    sign = (match["sign"] or (match["word"] or "")[:1]).lower()
    return match["letter"].upper() + {"♯": "#", "♭": "b", "s": "#", "f": "b"}.get(sign, sign)


def key_signature(value: str) -> dict[str, str]:
    """The accidental (`^` or `_`) the key gives each letter it alters: K:D → {F: ^, C: ^}."""
    match = KEY_TONIC.match(value.split("%", 1)[0].strip())
    if match is None:
        return {}
    tonic, word = match["tonic"], match["word"].lower()
    fifths = FIFTHS[tonic[0].upper()] + (7 if tonic.endswith("#") else 0)
    fifths -= 7 if len(tonic) == 2 and tonic.endswith("b") else 0
    fifths += MODE_SHIFT.get("m" if word == "m" else word[:3], 0)
    if fifths >= 0:
        return dict.fromkeys(SHARPS_IN_ORDER[:fifths], "^")
    return dict.fromkeys(SHARPS_IN_ORDER[::-1][:-fifths], "_")


# --- letter accidentals -----------------------------------------------------------------------


@dataclass
class _Accidentals:
    """What rewriting letter accidentals did, for the report."""

    rewritten: list[str] = field(default_factory=list)
    marked: int = 0


def _write_letter_accidentals_as_abc(lines: list[str], fixes: list[str]) -> list[str]:
    """`F#` → `^F` always (`#` has no other meaning in ABC music); `Bb` → `_B` when the writer
    uses letter accidentals elsewhere or when reading them as flats makes the bars add up (in
    ABC `Bb` is also B then b). An ABC accidental lasts to the bar line, so a later plain note
    of that letter in the bar gets the key's own accidental, as the writer meant it."""
    sharps = _Accidentals()
    with_sharps = _rewrite_accidentals(lines, flats=False, done=sharps)
    both = _Accidentals()
    with_flats = _rewrite_accidentals(lines, flats=True, done=both)
    use_flats = len(both.rewritten) > len(sharps.rewritten) and (
        bool(sharps.rewritten) or _misfit_bars(with_flats) < _misfit_bars(with_sharps))
    done, result = (both, with_flats) if use_flats else (sharps, with_sharps)
    if done.rewritten:
        shown = ", ".join(dict.fromkeys(done.rewritten))
        fixes.append(f"wrote {len(done.rewritten)} letter accidental(s) the ABC way, before the "
                     f"note: {shown}")
    if done.marked:
        fixes.append(f"marked {done.marked} later note(s) with the key's accidental, since an "
                     "ABC accidental lasts to the bar line")
    return result


def _misfit_bars(lines: list[str]) -> int:
    scanned = scan_abc("\n".join(lines) + "\n")
    return sum(bar.checked and bar.expected is not None and bar.duration != bar.expected
               for tune in scanned.tunes for bar in tune.bars)


def _rewrite_accidentals(lines: list[str], *, flats: bool, done: _Accidentals) -> list[str]:
    key: dict[str, str] = {}
    result = []
    for line in lines:
        if line.startswith("K:"):
            key = key_signature(line[2:])
        if is_music_line(line):
            line, key = _rewrite_line(line, key, flats=flats, done=done)
        result.append(line)
    return result


def _rewrite_line(line: str, key: dict[str, str], *, flats: bool,
                  done: _Accidentals) -> tuple[str, dict[str, str]]:
    out: list[str] = []
    altered: dict[str, str] = {}  # letters given an accidental in this bar, by this repair
    position = 0
    while position < len(line):
        char = line[position]
        skipped = _markup_end(line, position)
        if skipped is not None:
            markup = line[position:skipped]
            if markup.startswith("[K:"):
                key = key_signature(markup[3:-1])
            out.append(markup)
            position = skipped
            continue
        if char == "|":
            altered = {}
        if char in "^_=":
            end = position
            while end < len(line) and line[end] in "^_=":
                end += 1
            if end < len(line) and line[end] in NOTE_LETTERS:
                altered.pop(line[end].upper(), None)
            out.append(line[position:end])
            position = end
            continue
        if char in NOTE_LETTERS:
            letter = char.upper()
            sharps = len(line[position + 1:]) - len(line[position + 1:].lstrip("#"))
            is_flat = (flats and char.isupper() and line[position + 1:position + 2] == "b"
                       and not line[position + 2:position + 3].isalpha())
            if sharps or is_flat:
                sign = "^" * min(sharps, 2) if sharps else "_"
                done.rewritten.append(f"{line[position:position + 1 + (sharps or 1)]} → "
                                      f"{sign}{char}")
                out.append(sign + char)
                altered[letter] = sign
                position += 1 + (sharps or 1)
                continue
            own = key.get(letter, "=")
            if letter in altered and altered[letter] != own:
                out.append(own)
                done.marked += 1
        out.append(char)
        position += 1
    return "".join(out), key


def _markup_end(line: str, position: int) -> int | None:
    """The end of a comment, annotation, decoration or inline field starting here, if one does:
    text inside them is not music."""
    char = line[position]
    if char == "%":
        return len(line)
    if char in "\"!":
        end = line.find(char, position + 1)
        return end + 1 if end > 0 else None
    if char == "[" and re.match(r"\[[A-Za-z]:", line[position:]):
        end = line.find("]", position)
        return end + 1 if end > 0 else len(line)
    return None


# --- a tune cut off by the token limit --------------------------------------------------------


def _drop_cut_off_bar(lines: list[str], fixes: list[str], *, cut_off: bool) -> list[str]:
    """The bar after the last bar line, when the reply was cut off inside it (or it ends inside
    an unclosed chord, grace group or annotation) and it does not fill the meter."""
    music = [i for i, line in enumerate(lines) if is_music_line(line)]
    found = next(((i, _after_last_bar_line(lines[i])) for i in reversed(music)
                  if _after_last_bar_line(lines[i]) is not None), None)
    if found is None:
        return lines
    index, start = found
    assert start is not None
    tail_lines = [lines[index][start:], *(lines[i] for i in music if i > index)]
    tail = " ".join(part.strip() for part in tail_lines).strip()
    if not any(char in NOTE_LETTERS or char in "zx" for char in tail):
        return lines
    tune = scan_abc("\n".join(lines) + "\n").tunes
    diagnostics = tune[0].diagnostics if tune else []
    in_tail = [d for d in diagnostics if (d.line - 1, d.col - 1) >= (index, start)]
    unclosed = any(d.severity == "error" and any(text in d.message for text in CUT_EVIDENCE)
                   for d in in_tail)
    if not (cut_off or unclosed):
        return lines
    last_bars = [bar for bar in (tune[0].bars if tune else [])
                 if (bar.line - 1, bar.col - 1) >= (index, start)]
    full = (len(last_bars) == 1 and last_bars[0].expected is not None
            and last_bars[0].duration == last_bars[0].expected)
    if full and not unclosed:
        return lines
    fixes.append(f"the tune was cut off mid-bar; dropped its incomplete last bar {tail[:40]!r}")
    kept = lines[index][:start].rstrip()
    dropped = {i for i in music if i > index}
    return [kept if i == index else line for i, line in enumerate(lines)
            if i not in dropped and (i != index or kept)]


def _after_last_bar_line(line: str) -> int | None:
    """The position after the line's last bar line (outside annotations and comments)."""
    position, last = 0, None
    while position < len(line):
        skipped = _markup_end(line, position)
        if skipped is not None:
            position = skipped
            continue
        if line[position] == "|":
            end = position + 1
            while end < len(line) and line[end] in "|]:":
                end += 1
            last = position = end
            continue
        position += 1
    return last
