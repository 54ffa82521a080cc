"""The one filter ABC passes before any program reads it: directives that reach outside the music.

ABC comes from a model that a user can steer, and the programs that read it obey directives that
read files (`%%abc-include`, `%%format`, `%%EPS`, abc2midi's `%%MIDI ptstress`), copy raw
PostScript or SVG into the score, or copy a value as written into the score's markup (font names,
the background colour), where it can close an attribute or a style sheet and add script; one
(`staffbreak`) can make abcm2ps loop until it is killed.

Such a directive is **removed and reported**, not refused: the tune is still music a player can
play without it, so it is delivered, and a fault at the directive's line says what was removed
and why (in the report, and among the faults a model may be asked to correct; no run fails for
it).
The line is replaced by a comment saying so, so every later line keeps its number and the
checker's diagnostics still point at the right place.

Lines are read as abcm2ps and abc2midi read them: CR ends a line too, a line ending in `\\`
continues on the next (ABC 2.0), a `+:` line continues the field above, a directive can be a
`%%` line, an `I:` field or an inline `[I:…]` field, and a removed `%%begin…` block is removed up
to its `%%end…` line (to the end of the text when it has none).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from functools import partial

from img2music.tools.diagnostics import Diagnostic

logger = logging.getLogger(__name__)

CHECKER = "directive filter"
REMOVED_MARK = "% img2music removed a directive here:"


@dataclass(frozen=True)
class Rule:
    """Directives one reason forbids: `matches` is tried on the lower-case directive name
    (`%%MIDI` commands as `midi <command>`); `example` is what the rule removes."""

    name: str
    matches: re.Pattern[str]
    why: str
    example: str


def _rule(name: str, pattern: str, why: str, example: str) -> Rule:
    return Rule(name=name, matches=re.compile(pattern), why=why, example=example)


# The one list. Each entry has its own test (tests/test_abc_directives.py), and a fuzz test runs
# every directive the programs' manuals name through this filter and then through abcm2ps and
# abc2midi under strace, to show that nothing that reads or writes a file survives.
RULES: tuple[Rule, ...] = (
    _rule("abc-include", r"abc-include", "reads a file (abcm2ps and abc2midi include it as ABC)",
          "%%abc-include /etc/passwd"),
    _rule("format", r"format", "reads a format file", "%%format /etc/passwd"),
    _rule("EPS", r"eps", "reads a file into the score", "%%EPS /etc/hostname"),
    _rule("MIDI ptstress", r"midi ptstress", "reads a stress-model file (abc2midi)",
          "%%MIDI ptstress /etc/passwd"),
    _rule("ps / postscript", r"ps|postscript", "copies raw PostScript into the score",
          "%%postscript /x {showpage} def"),
    _rule("svg", r"svg", "copies raw SVG into the score", '%%svg <script>alert(1)</script>'),
    _rule("begin… blocks", r"begin(?!text$).*",
          "starts a block of raw PostScript, SVG or markup (all but %%begintext)",
          "%%beginsvg\n<script>alert(1)</script>\n%%endsvg"),
    _rule("fonts", r".*font|setfont-.*",
          "copies a font name as written into the score's style sheet",
          '%%musicfont "serif}</style><script>alert(1)</script>"'),
    _rule("bgcolor", r"bgcolor", "copies a colour as written into the score's markup",
          '%%bgcolor red" onload="alert(1)'),
    _rule("staffbreak", r"staffbreak",
          "can make abcm2ps loop until it is killed (an inline [I:staffbreak] in abcm2ps 8.14)",
          "%%staffbreak 1cm"),
    _rule("directive prefix", r"abcm2ps|ss-pref",
          "changes which lines are directives, which would hide the others from this filter",
          "%%ss-pref %$"),
)

LINE_DIRECTIVE = re.compile(
    r'^[\ufeff \t]*(?P<form>%%(?:abc[ \t]+I:)?|I:)[ \t]*(?P<name>[^\s%\]="]+)(?P<rest>[^%]*)')
INLINE_DIRECTIVE = re.compile(r'\[[ \t]*I:[ \t]*(?P<name>[^\s%\]="]+)(?P<rest>[^\]\n]*)\]')
CONTINUATION = re.compile(r"\\[ \t]*(?:%.*)?$")
FIELD_CONTINUATION = re.compile(r"^[ \t]*\+:")
MAX_SOURCE_CHARS = 200


@dataclass(frozen=True)
class FilteredAbc:
    """The ABC any program may read, and a fault for each directive taken out of it."""

    text: str
    removed: list[Diagnostic] = field(default_factory=list)


def forbidding_rule(name: str, rest: str = "") -> Rule | None:
    """The rule that forbids directive `name` (with the text after it), if any."""
    key = name.lower()
    if key == "midi":
        command = rest.lstrip(" \t=").split(maxsplit=1)
        key = f"midi {command[0].lower()}" if command else key
    return next((rule for rule in RULES if rule.matches.fullmatch(key)), None)


def filter_directives(abc: str) -> FilteredAbc:
    """`abc` (CR, CRLF or LF) with every forbidden directive removed; lines keep their numbers."""
    lines = abc.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    removed: list[Diagnostic] = []
    index = 0
    while index < len(lines):
        last = _group_end(lines, index)
        group = lines[index:last + 1]
        found = _line_rule(group)
        if found is not None:
            what, name, rule = found
            end = _block_end(lines, last, name) if name.lower().startswith("begin") else last
            removed.append(_fault(index + 1, 1, what, rule, lines[index]))
            lines[index:end + 1] = [f"{REMOVED_MARK} {name}"] + ["%"] * (end - index)
            index = end + 1
            continue
        if len(group) == 1:
            lines[index] = INLINE_DIRECTIVE.sub(partial(_inline, line=index + 1, removed=removed),
                                                lines[index])
        elif any(_inline_rule(field) for field in INLINE_DIRECTIVE.finditer(_joined(group))):
            removed.append(_fault(index + 1, 1, "[I:…]", _inline_rule_of(group), lines[index]))
            lines[index:last + 1] = [f"{REMOVED_MARK} inline field"] + ["%"] * (last - index)
        index = last + 1
    if removed:
        logger.warning("removed %d directive(s) that reach outside the music", len(removed))
    return FilteredAbc(text="\n".join(lines), removed=removed)


def _group_end(lines: list[str], index: int) -> int:
    """The last line of the logical line starting at `index` (`\\` and `+:` continuations)."""
    last = index
    while last + 1 < len(lines) and (CONTINUATION.search(lines[last])
                                     or FIELD_CONTINUATION.match(lines[last + 1])):
        last += 1
    return last


def _joined(group: list[str]) -> str:
    """A logical line as the programs see it."""
    text = group[0]
    for line in group[1:]:
        continued = FIELD_CONTINUATION.match(line)
        text = (text + " " + line[continued.end():]) if continued else \
            CONTINUATION.sub("", text) + line
    return text


def _line_rule(group: list[str]) -> tuple[str, str, Rule] | None:
    """How a logical line names its directive, the name, and the rule that forbids it, if one
    does: read joined, as the programs do, and line by line, in case a program does not join."""
    for text in (_joined(group), *group):
        match = LINE_DIRECTIVE.match(text)
        if match is not None:
            rule = forbidding_rule(match["name"], match["rest"])
            if rule is not None:
                form = "I:" if match["form"] == "I:" else "%%"
                return f"{form}{match['name']}", match["name"], rule
    return None


def _inline_rule(field: re.Match[str]) -> Rule | None:
    return forbidding_rule(field["name"], field["rest"])


def _inline_rule_of(group: list[str]) -> Rule:
    return next(rule for field in INLINE_DIRECTIVE.finditer(_joined(group))
                if (rule := _inline_rule(field)) is not None)


def _inline(field: re.Match[str], *, line: int, removed: list[Diagnostic]) -> str:
    rule = _inline_rule(field)
    if rule is None:
        return field[0]
    removed.append(_fault(line, field.start() + 1, f"[I:{field['name']}]", rule,
                            field.string))
    return ""


def _block_end(lines: list[str], last: int, name: str) -> int:
    """The `%%end…` line closing a `%%begin…` block, or the last line when it is never closed."""
    end = re.compile(r"^[ \t]*%%[ \t]*end" + re.escape(name[5:]) + r"\b", re.IGNORECASE)
    return next((n for n in range(last + 1, len(lines)) if end.match(lines[n])), len(lines) - 1)


def _fault(line: int, col: int, what: str, rule: Rule, source: str) -> Diagnostic:
    return Diagnostic(severity="fault", line=line, col=col, checker=CHECKER,
                      message=f"removed {what}: it {rule.why}; img2music never runs such "
                      "directives", source=source[:MAX_SOURCE_CHARS])
