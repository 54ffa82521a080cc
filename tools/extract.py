"""Pull the ABC tune out of a model's free text and keep the prose around it as its motivation.

Models wrap tunes in fences (sometimes inside other fences), `<abc>` tags, JSON string values,
reasoning blocks and markdown; write drafts and placeholders before the answer, prose in any
language around it, forget X:, and get cut off at the token limit. Cutting "from the last X: to
the last |" swallows the prose after a tune and loses its lyrics and voices, so extents are
decided line by line with the scan's own idea of music.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from img2music.tools.abc_scan import is_field_line, is_music_line
from img2music.tools.check import normalise_abc

THINK_TAG = re.compile(r"<(/?)think>", re.IGNORECASE)
FENCE = re.compile(r"^[ \t]*(?:`{3,}|~{3,})[ \t]*(?P<tag>[\w+.-]*)[ \t]*$")
ABC_TAG = re.compile(r"<(?P<close>/?)abc(?:\s[^>]*)?>", re.IGNORECASE)
JSON_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*(?:"|\Z)')
ABC_FIELD_IN_STRING = re.compile(r"(?:^|\n)\s*[XK]:")
LABEL = re.compile(
    r"^[ \t]*(?:#{1,6}[ \t]*)?(?:\*\*|__)?(?:motivation|explanation|rationale)(?:\*\*|__)?[ \t]*"
    r"(?::[ \t]*(?:\*\*|__)?[ \t]*|$)",
    re.IGNORECASE | re.MULTILINE,
)
BLANK_RUN = re.compile(r"\n{3,}")


class Extraction(BaseModel):
    """The tune goes to the checkers and the prose to the listener, so they are kept apart."""

    model_config = ConfigDict(frozen=True)

    abc: str | None = Field(description="The chosen tune, normalised; None when none was found.")
    motivation: str = Field(description="The prose outside the tune and the reasoning.")
    candidates: int = Field(ge=0, description="How many complete tunes were found.")
    notes: list[str] = Field(default_factory=list, description="One line per thing done.")
    cut_off: bool = Field(default=False, description="The reply ends inside the chosen tune (its "
                          "fence or JSON string never closes): the token limit cut it.")


@dataclass
class _Span:
    """Line indices (`end` exclusive) let the motivation drop exactly the tune's lines."""

    start: int
    end: int = 0
    lines: list[str] = field(default_factory=list)
    anchored: bool = False
    has_field: bool = False
    key_seen: bool = False
    has_music: bool = False
    complete: bool = False
    cut_off: bool = False
    fence: int | None = None  # the line of the fence it sits in, if any

    def add(self, index: int, line: str, kind: str) -> None:
        self.lines.append(line)
        self.end = index + 1
        self.anchored = self.anchored or line.startswith(("X:", "K:"))
        self.has_field = self.has_field or kind == "field"
        self.has_music = self.has_music or kind == "music"
        self.complete = self.complete or (self.key_seen and kind == "music")
        self.key_seen = self.key_seen or line.startswith("K:")


def _kind(line: str) -> str:
    if not line:
        return "blank"
    if FENCE.match(line):
        return "fence"
    if line.startswith("%"):
        return "comment"
    if is_field_line(line):
        return "field"
    return "music" if is_music_line(line) else "prose"


def _find_spans(lines: list[str]) -> list[_Span]:
    """Tunes start at a field or comment line and run over fields, comments and music.

    A blank line is judged by the next non-blank one: music or fields carry the tune on (a model
    spacing out its lines inside a fence, or between voices), prose or a fence end it. A fence
    with a language tag always opens one (```` ```markdown ```` may hold ```` ```abc ````); a
    bare fence closes the innermost open one. A tune still inside an open fence when the text
    ends was cut off.
    """
    spans: list[_Span] = []
    current: _Span | None = None
    open_fences: list[int] = []
    for index, raw in enumerate(lines):
        line = raw.strip()
        kind = _kind(line)
        if kind == "blank":
            continue
        if kind == "fence":
            fence = FENCE.match(line)
            if fence is not None and not fence["tag"] and open_fences:
                open_fences.pop()
            else:
                open_fences.append(index)
        if current is not None and (
            kind in ("prose", "fence") or (line.startswith("X:") and current.has_field)
        ):
            current = None
        if current is None:
            if kind not in ("field", "comment"):
                continue
            current = _Span(start=index, fence=open_fences[-1] if open_fences else None)
            spans.append(current)
        current.add(index, line, kind)
    if current is not None and current.fence is not None and current.fence in open_fences:
        current.cut_off = True
    return spans


def _unpack_json_strings(text: str, notes: list[str]) -> tuple[str, list[str]]:
    """ABC inside JSON string values (`{"abc": "X:1\\nK:C\\n..."}`) laid out as lines, fenced
    so the JSON around it stays out of the tune; a string cut off by the token limit is left
    with its fence open. Returns the text and the other strings that read as prose."""
    prose: list[str] = []
    pieces: list[str] = []
    position = 0
    for match in JSON_STRING.finditer(text):
        literal = match.group()
        closed = len(literal) > 1 and literal.endswith('"')
        try:
            value = json.loads(literal if closed else literal + '"')
        except ValueError:
            continue
        if not isinstance(value, str):
            continue
        if "\n" not in value or not ABC_FIELD_IN_STRING.search(value):
            if len(value.split()) >= 4:
                prose.append(value.strip())
            continue
        pieces += [text[position:match.start()], "\n```abc\n", value.strip("\n"),
                   "\n```\n" if closed else "\n"]
        position = match.end()
        notes.append("read the tune from a JSON string" + ("" if closed else " cut off"))
    if not pieces:
        return text, []
    return "".join([*pieces, text[position:]]), prose


def _split_thinking(text: str, notes: list[str]) -> tuple[str, str]:
    """(answer, reasoning); a lone </think> means the chat template opened the block itself."""
    answer: list[str] = []
    reasoning: list[str] = []
    tags = list(THINK_TAG.finditer(text))
    lone = inside = bool(tags) and tags[0].group(1) == "/"
    closed, position = 0, 0
    for tag in tags:
        (reasoning if inside else answer).append(text[position:tag.start()])
        position = tag.end()
        closing = tag.group(1) == "/"
        if closing and inside:
            closed += 1
        inside = not closing
    (reasoning if inside else answer).append(text[position:])
    if lone:
        closed -= 1
        notes.append("dropped the text before a lone </think> as reasoning")
    if closed:
        notes.append(
            "removed a <think> block" if closed == 1 else f"removed {closed} <think> blocks"
        )
    if inside:
        notes.append("a <think> block was never closed; took the rest of the text as reasoning")
    return "\n".join(answer), "\n".join(reasoning)


def _motivation(lines: list[str], spans: list[_Span]) -> str:
    """Everything but tunes and fences; a lone field-like line with no X: or K: stays prose."""
    dropped = {index for span in spans if span.anchored for index in range(span.start, span.end)}
    prose = "\n".join(
        line.rstrip() for index, line in enumerate(lines)
        if index not in dropped and not FENCE.match(line)
    )
    return BLANK_RUN.sub("\n\n", LABEL.sub("", prose)).strip()


def extract_abc(text: str, *, max_chars: int = 200_000) -> Extraction:
    """The last complete tune outside the reasoning, since models revise drafts as they write.

    A tune cut off by the end of the reply is taken only when no complete one came before it;
    a tune with no K: line only when there is nothing else, so that the checker can say what
    is missing rather than that nothing was found.
    """
    notes: list[str] = []
    if len(text) > max_chars:
        text = text[:max_chars]
        notes.append(f"input longer than {max_chars} characters was cut")
    text = normalise_abc(text)
    answer, reasoning = _split_thinking(text, notes)
    answer = ABC_TAG.sub(lambda tag: "\n```\n" if tag["close"] else "\n```abc\n", answer)
    answer, json_prose = _unpack_json_strings(answer, notes)
    lines = answer.split("\n")
    spans = _find_spans(lines)
    pool = spans
    complete = [span for span in spans if span.complete]
    if not complete and reasoning.strip():
        thought = _find_spans(reasoning.split("\n"))
        if any(span.complete for span in thought):
            pool, complete = thought, [span for span in thought if span.complete]
            notes.append("the only tune was inside the <think> block; took it from there")
    chosen = _choose(pool, complete, notes)
    abc = "\n".join(chosen.lines) + "\n" if chosen else None
    motivation = "\n\n".join(json_prose) if json_prose else _motivation(lines, spans)
    return Extraction(abc=abc, motivation=motivation, candidates=len(complete), notes=notes,
                      cut_off=chosen is not None and chosen.cut_off)


def _choose(pool: list[_Span], complete: list[_Span], notes: list[str]) -> _Span | None:
    whole = [span for span in complete if not span.cut_off]
    if len(complete) > 1:
        notes.append(f"found {len(complete)} tunes; took the last complete one")
    skipped = sum(span.anchored and not span.complete for span in pool)
    if skipped:
        notes.append(f"skipped {skipped} incomplete tune{'s' if skipped > 1 else ''} "
                     "(no K: line or no music after it)")
    if whole:
        if whole[-1] is not complete[-1]:
            notes.append("skipped the last tune: the reply ends inside it")
        return whole[-1]
    if complete:
        notes.append("the reply ends inside the tune: it was cut off")
        return complete[-1]
    keyless = [span for span in pool if span.lines[0].startswith("X:") and span.has_music]
    if keyless:
        notes.append("took a tune that has no K: line, the only one there is")
        return keyless[-1]
    notes.append("no ABC tune found")
    return None


def strip_reasoning(text: str) -> str:
    """The answer without `<think>` blocks: what a prose step (the description) keeps."""
    answer, _ = _split_thinking(normalise_abc(text), [])
    return answer.strip()
