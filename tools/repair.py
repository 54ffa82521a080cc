"""Mechanical repairs that are safe to make without the composer: never a note, never a key.

A model that forgot `X:`, put `M:` after `K:`, or chatted after its last bar wrote a tune that is
fine as music; fixing those here saves a repair round-trip to the model. Each fix is reported.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, Field

from img2music.tools.abc_scan import FIELD_LINE, is_music_line
from img2music.tools.check import normalise_abc

# Fields that mean the same above K: as between K: and the first note.
MOVABLE_FIELDS = set("TMLQCRONZSBDHAGF")
LAST_BAR_LINE = re.compile(r"^(.*(?:\|\]|\|\||:\||\|))(\s*)(.*)$")


class Repair(BaseModel):
    abc: str
    fixes: list[str] = Field(default_factory=list, description="One line per change made.")
    notes: list[str] = Field(
        default_factory=list, description="Problems seen but left for the composer."
    )


def repair_abc(text: str) -> Repair:
    """Apply the safe fixes to the first tune in `text` and say what was done."""
    fixes: list[str] = []
    normalised = normalise_abc(text)
    if normalised != text:
        fixes.append("converted CR/CRLF line ends to LF")
    lines = [line.rstrip() for line in normalised.split("\n")]
    lines = _drop_leading_prose(lines, fixes)
    lines = _put_x_first(lines, fixes)
    notes: list[str] = []
    key_index = next((i for i, line in enumerate(lines) if line.startswith("K:")), None)
    if key_index is None:
        notes.append("no K: field; the key is the composer's choice, so it is not guessed")
    else:
        lines = _move_fields_above_key(lines, key_index, fixes)
        lines = _drop_blank_lines_in_body(lines, fixes)
        lines = _drop_trailing_junk(lines, fixes)
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
