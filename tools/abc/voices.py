"""A tune's voices one by one: each voice's music as a tune of its own, and its name.

Models write voices in blocks (`V:1` … `V:2` … `V:1` again) or inline (`[V:1] … [V:2] …` on one
line). abc2midi reads both; music21 makes a new part of each block and reads inline voices as one
part, so readers that are not abc2midi get one voice at a time from here. Voices are listed in
the order they first appear, declared in the header or met in the body, which is the order of
abc2midi's tracks.

A voice's tune is the header (its `V:` lines left out), the body lines written before any voice
(directives, comments), the voice's own `V:` declaration, and every piece of music and field
line written while that voice was the current one. The text is expected filtered
(`directives.filter_directives`) and line ends normalised.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from img2music.tools.abc.scan import FIELD_LINE, VOICE_ID, split_tunes

INLINE_VOICE = re.compile(r"\[V:[ \t]*(?P<value>[^\]]*)\]")
VOICE_NAME = re.compile(
    r"""(?:^|\s)(?:name|nm)[ \t]*=[ \t]*(?:"(?P<quoted>[^"]*)"|(?P<bare>\S+))""")
DEFAULT_VOICE = "1"


@dataclass(frozen=True)
class Voice:
    """One voice: its `V:` id, the name a score or a MIDI track shows, and its music as a tune."""

    id: str
    name: str
    abc: str


@dataclass
class _Written:
    declaration: str
    lines: list[str] = field(default_factory=list)


def split_voices(abc: str) -> list[Voice]:
    """The first tune's voices, in order of first appearance; a tune without `V:` is one voice
    (id "1") holding the whole tune."""
    lines = abc.split("\n")
    tunes = split_tunes(lines)
    if not tunes:
        return []
    first, last = tunes[0]
    tune = lines[first:last + 1]
    key = next((index for index, line in enumerate(tune) if line.startswith("K:")), None)
    if key is None:
        return [Voice(id=DEFAULT_VOICE, name=_shown_name(DEFAULT_VOICE, ""), abc=abc)]
    header: list[str] = []
    voices: dict[str, _Written] = {}
    for line in tune[:key + 1]:
        match = FIELD_LINE.match(line)
        if match is not None and match[1] == "V":
            _declare(voices, match[2])
        else:
            header.append(line)
    preamble: list[str] = []
    current: str | None = None
    for line in tune[key + 1:]:
        if not line.strip():
            break  # a blank line ends the tune
        match = FIELD_LINE.match(line)
        if match is not None and match[1] == "V":
            current = _declare(voices, match[2]) or current
            continue
        if line.lstrip().startswith("%") or (match is not None and not line.startswith("|")):
            (voices[current].lines if current is not None else preamble).append(line)
            continue
        position = 0
        for mark in INLINE_VOICE.finditer(line):
            current = _add_music(voices, current, line[position:mark.start()])
            current = _declare(voices, mark["value"]) or current
            position = mark.end()
        current = _add_music(voices, current, line[position:])
    if not voices:
        _declare(voices, DEFAULT_VOICE)
    return [Voice(id=voice_id, name=_shown_name(voice_id, written.declaration),
                  abc="\n".join([*header, *preamble, f"V:{written.declaration}",
                                 *written.lines]) + "\n")
            for voice_id, written in voices.items()]


def _declare(voices: dict[str, _Written], value: str) -> str | None:
    """The id a `V:` value names (declaring it when new; a later declaration with more
    parameters replaces a bare one), or None when it names none."""
    match = VOICE_ID.match(value.split("%", 1)[0])
    if match is None:
        return None
    voice_id = match[1]
    declaration = value.split("%", 1)[0].strip()
    written = voices.setdefault(voice_id, _Written(declaration))
    if len(declaration) > len(written.declaration):
        written.declaration = declaration
    return voice_id


def _add_music(voices: dict[str, _Written], current: str | None, music: str) -> str | None:
    """Give a piece of a music line to the current voice (the first declared, or "1", when
    none is yet); returns the current voice."""
    if not music.strip():
        return current
    if current is None:
        current = next(iter(voices), None) or _declare(voices, DEFAULT_VOICE)
    assert current is not None
    voices[current].lines.append(music)
    return current


def _shown_name(voice_id: str, declaration: str) -> str:
    """The voice's `name=` (or `nm=`), else "Voice 1" for a number, else its id."""
    named = VOICE_NAME.search(declaration)
    if named is not None:
        name = (named["quoted"] if named["quoted"] is not None else named["bare"]).strip()
        if name:
            return name
    return f"Voice {voice_id}" if voice_id.isdigit() else voice_id
