"""A tune's `% [section]` blocks as line ranges, and the text edits that recompose one of them or
add bars at the end, leaving every other line as it was.

The compose prompt asks for sections marked with comment lines (`% [intro]`, `% [theme]`).
Models write them in three ways, all handled here:

- one voice: a marker, then its music, up to the next marker;
- voices in blocks, a marker inside each block (`V:1`, `% [theme]`, music, `% [close]`, ...,
  `V:2`, `% [theme]`, ...): the section is one part per voice, each ending at the next marker or
  at the next `V:` line;
- a marker above the voices (`% [theme]`, `V:1`, music, `V:2`, music), or above lines of inline
  voices (`[V:1] ... [V:2] ...`): one part holding every voice, up to the next marker.

A name written twice in one voice (a reprise) is two sections, the second named `theme#2`.
Only the first tune of a text is read. The text is expected with LF line ends.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from img2music.tools.abc.scan import FIELD_LINE, SECTION_MARK, VOICE_ID, split_tunes

END_BAR = re.compile(r"\|\][ \t]*$")
REPEATED = "#"


class SectionNotFound(ValueError):
    """The tune has no section of that name; the message lists those it has, in one line."""


class SectionAnswerUnusable(ValueError):
    """A model's answer has no music for the section (or for one of its voices)."""


@dataclass(frozen=True)
class Part:
    """Lines `start` (the marker) to `end` (exclusive) of the text, in one voice (`voice`), or
    across voices (None: a marker above the voices, or a tune without `V:` blocks)."""

    start: int
    end: int
    voice: str | None


@dataclass(frozen=True)
class Section:
    name: str
    parts: tuple[Part, ...]


@dataclass
class _Open:
    name: str
    start: int
    voice: str | None
    across: bool = False  # opened above the voices: `V:` lines do not end it
    music: bool = False


def _voice_of(line: str) -> str | None:
    """The voice a `V:` field line switches to; None for any other line."""
    match = FIELD_LINE.match(line)
    if match is None or match[1] != "V":
        return None
    voice = VOICE_ID.match(match[2].split("%", 1)[0])
    return voice[1] if voice else None


def _body(lines: list[str]) -> tuple[int, int] | None:
    """First and last+1 line of the first tune's body (after its K: line, up to a blank line)."""
    tunes = split_tunes(lines)
    if not tunes:
        return None
    first, last = tunes[0]
    key = next((i for i in range(first, last + 1) if lines[i].startswith("K:")), None)
    if key is None:
        return None
    end = key + 1
    while end <= last and lines[end].strip():
        end += 1
    return key + 1, end


def find_sections(abc: str) -> list[Section]:
    """The first tune's sections, in the order they first appear."""
    lines = abc.split("\n")
    body = _body(lines)
    if body is None:
        return []
    found: list[tuple[str, Part]] = []
    current_voice: str | None = None
    voices_seen = False
    part: _Open | None = None

    def close(end: int) -> None:
        if part is not None:
            found.append((part.name, Part(part.start, end, None if part.across else part.voice)))

    for index in range(*body):
        line = lines[index]
        marker = SECTION_MARK.match(line)
        voice = _voice_of(line)
        if marker is not None:
            close(index)
            part = _Open(marker[1].strip(), index, current_voice)
        elif voice is not None:
            voices_seen = True
            if part is not None and part.music and not part.across:
                close(index)
                part = None
            elif part is not None and not part.music:
                part.across = True
            current_voice = voice
        elif part is not None and line.strip() and not line.lstrip().startswith("%"):
            part.music = True
    close(body[1])
    if not voices_seen:  # one voice: no part belongs to a voice block
        found = [(name, Part(p.start, p.end, None)) for name, p in found]
    return _grouped(found)


def _grouped(found: list[tuple[str, Part]]) -> list[Section]:
    """Parts of one name, one per voice; a name met again in a voice starts `name#2`."""
    parts: dict[str, list[Part]] = {}
    seen: dict[tuple[str, str | None], int] = {}
    for name, part in found:
        count = seen.get((name.lower(), part.voice), 0) + 1
        seen[(name.lower(), part.voice)] = count
        key = name if count == 1 else f"{name}{REPEATED}{count}"
        same = next((known for known in parts if known.lower() == key.lower()), key)
        parts.setdefault(same, []).append(part)
    return [Section(name=name, parts=tuple(group)) for name, group in parts.items()]


def section_names(abc: str | None) -> list[str]:
    return [section.name for section in find_sections(abc or "")]


def find_section(abc: str, name: str) -> Section:
    """The section called `name` (case and surrounding spaces ignored), or `SectionNotFound`."""
    sections = find_sections(abc)
    wanted = " ".join(name.split()).lower()
    for section in sections:
        if " ".join(section.name.split()).lower() == wanted:
            return section
    there = ", ".join(section.name for section in sections)
    raise SectionNotFound(f"the tune has no section {name!r}; its sections are: {there}"
                          if sections else f"the tune has no section {name!r}: it marks no "
                          "sections with `% [name]` lines")


def section_text(abc: str, section: Section) -> str:
    """The lines of the section as they stand, part after part."""
    lines = abc.split("\n")
    return "\n".join(line for part in section.parts for line in lines[part.start:part.end])


def header_lines(tune: str) -> list[str]:
    """The first tune's header, its X: line to its K: line."""
    lines = tune.split("\n")
    body = _body(lines)
    if body is None:
        return []
    start = max((i for i in range(body[0]) if lines[i].startswith("X:")), default=0)
    return lines[start:body[0]]


def body_lines(tune: str) -> list[str]:
    """The music of an answer written as a tune of its own: the lines after its K: line."""
    lines = tune.split("\n")
    body = _body(lines)
    return lines[body[0]:body[1]] if body else []


def voice_ids(abc: str) -> list[str]:
    """The `V:` voices of the first tune's body, in order of first appearance."""
    lines = abc.split("\n")
    body = _body(lines)
    ids: list[str] = []
    for index in range(*(body or (0, 0))):
        voice = _voice_of(lines[index])
        if voice is not None and voice not in ids:
            ids.append(voice)
    return ids


def replace_section(abc: str, section: Section, answer: list[str]) -> str:
    """`abc` with each part of `section` replaced by the answer's music for it (`body_lines`
    of the model's answer): the marker lines and every line outside the section stay as they
    are. A part in a voice block takes the answer's lines under that voice's `V:` line; a
    part across voices takes the whole answer."""
    lines = abc.split("\n")
    blocks = _voice_blocks(answer)
    for part in sorted(section.parts, key=lambda p: p.start, reverse=True):
        if part.voice is None or (len(blocks) == 1 and None in blocks):
            music = [line for line in answer if not _same_marker(line, section.name)]
        elif part.voice in blocks:
            music = blocks[part.voice]
        else:
            raise SectionAnswerUnusable(f"the answer has no music for voice {part.voice} of "
                                        f"section {section.name}")
        music = _without_blank_ends(music)
        if not music:
            raise SectionAnswerUnusable(f"the answer has no music for section {section.name}")
        lines[part.start + 1:part.end] = music
    return "\n".join(lines)


def _voice_blocks(answer: list[str]) -> dict[str | None, list[str]]:
    """The answer's lines by the `V:` block they are in (None before any), markers left out."""
    blocks: dict[str | None, list[str]] = {}
    voice: str | None = None
    for line in answer:
        switched = _voice_of(line)
        if switched is not None:
            voice = switched
            blocks.setdefault(voice, [])
        elif not SECTION_MARK.match(line):
            blocks.setdefault(voice, []).append(line)
    if None in blocks and len(blocks) > 1 and not "".join(blocks[None]).strip():
        del blocks[None]
    return blocks


def _same_marker(line: str, name: str) -> bool:
    marker = SECTION_MARK.match(line)
    return marker is not None and marker[1].strip().lower() == name.split(REPEATED)[0].lower()


def _without_blank_ends(lines: list[str]) -> list[str]:
    kept = [line.rstrip() for line in lines]
    while kept and not kept[0].strip():
        kept.pop(0)
    while kept and not kept[-1].strip():
        kept.pop()
    return [line for line in kept if line.strip()]  # a blank line would end the tune


def append_bars(abc: str, answer: list[str]) -> tuple[str, list[str]]:
    """`abc` with the answer's music after its last line, and what was changed besides: a final
    bar line `|]` that ended the tune becomes a plain `|`, since the tune goes on."""
    lines = abc.split("\n")
    body = _body(lines)
    music = _without_blank_ends(answer)
    if body is None or not music:
        raise SectionAnswerUnusable("the answer has no music to add")
    end = body[1]
    changes: list[str] = []
    last = end - 1
    if END_BAR.search(lines[last]):
        lines[last] = END_BAR.sub("|", lines[last])
        changes.append(f"line {last + 1}: the final bar line |] became | as the tune goes on")
    lines[end:end] = music
    return "\n".join(lines), changes
