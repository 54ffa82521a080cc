"""The ABC grammar that constrains a model while it writes, so broken syntax cannot be written.

The grammar is data (`prompts/abc.ebnf`, xgrammar's EBNF, which vLLM's structured outputs take
as `{"grammar": …}`): its `root` is the whole answer (a <think> block, free text, one ```abc
block, then `Motivation:`), and `tune` is one tune. A rule can be swapped for another definition
by name, so a run can narrow the grammar (fix its key, meter or tempo) without editing the file.
`matches` says whether a text is in a grammar, so an answer said to be constrained can be
checked (a server that ignores the field writes what it likes).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from functools import lru_cache
from importlib.resources import files
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import xgrammar

GRAMMAR_FILE = "abc.ebnf"
READ_RULES = {"body": "read-body", "bar": "read-bar", "open-bar": "read-open-bar",
              "plain-bar": "read-plain-bar", "lead-extra": "read-lead-extra",
              "measure-item": "read-measure-item", "inline-field": "read-inline-field",
              "header-line": "read-header-line", "leading-body-line": "read-leading-body-line",
              "body-field-line": "read-body-field-line", "decoration": "read-decoration",
              "music-line": "read-music-line", "more-body-lines": "read-more-body-lines",
              "chord-decoration": "read-chord-decoration",
              "plain-decoration": "read-plain-decoration", "pair-link": "read-pair-link",
              "rest-marks": "read-rest-marks", "pair-chord": "read-pair-chord",
              "pair-marks": "read-pair-marks", "tempo": "read-tempo",
              "measure-lead": "read-measure-lead", "tail-bar": "read-tail-bar",
              "slur-marks": "read-slur-marks", "tie-target": "read-tie-target",
              "pitched-tied-tuplet-note": "read-pitched-tied-tuplet-note",
              "text": "read-text", "lead-character": "read-lead-character",
              "quoted-piece": "read-quoted-piece", "note-denominator": "read-note-denominator",
              "power-of-two": "read-power-of-two", "unit-denominator": "read-unit-denominator",
              "beat": "read-beat", "beats-per-minute": "read-beats-per-minute",
              "count": "read-count", "tuplet-member": "read-tuplet-member",
              "tuplet-chord": "read-tuplet-chord", "tuplet-rest": "read-tuplet-rest",
              "meter-count": "read-meter-count", "meter-sum": "read-meter-sum",
              "meter-denominator": "read-meter-denominator"}
_RULE = re.compile(r"^(?P<name>[A-Za-z][\w-]*)[ \t]*::=", re.MULTILINE)


class GrammarError(ValueError):
    """A rule replacement names a rule the grammar does not have."""


@lru_cache(maxsize=1)
def grammar_file_text() -> str:
    """The shipped grammar file, comments included."""
    return files("img2music.prompts").joinpath(GRAMMAR_FILE).read_text(encoding="utf-8")


def answer_grammar(rules: Mapping[str, str] | None = None, *, thinking: bool = False) -> str:
    """The grammar a model server receives: the whole answer, with `rules` swapped in.

    In think mode the <think> block before the answer is free text; otherwise it may only be
    empty (Keye writes an empty one when told /no_think).
    """
    swaps = {"thought": "free-thought"} if thinking else {}
    return replace_rules(grammar_file_text(), {**swaps, **(rules or {})})


def matches(grammar: str, text: str, *, cut: bool = False) -> bool:
    """Whether `text` is in the grammar; with `cut`, whether it starts a text that is (an
    answer cut short at the token limit)."""
    import xgrammar  # here: it loads torch, which a run against an endpoint need not pay for

    matcher = xgrammar.GrammarMatcher(_compiled(grammar), terminate_without_stop_token=True)
    return matcher.accept_string(text) and (cut or matcher.is_terminated())


# How a start of a tune may be closed: at a line's end, after ending the repeat it left open,
# or, within the last line (where a cut falls), after closing the chord or slurs it is inside.
REPEAT_CLOSING = " :|\n"
CLOSINGS = ("\n", REPEAT_CLOSING)
CUT_CLOSINGS = (*CLOSINGS, "]\n", ")\n", "))\n", "] :|\n", ") :|\n", ")) :|\n")


def closing_points(grammar: str, text: str) -> list[tuple[int, str]]:
    """Where a start of `text` can be closed as a whole text of `grammar`: each `(n, closing)`
    such that `text[:n] + closing` is in it (the closing is empty after a line break, else the
    first of `CLOSINGS`, or in the last line `CUT_CLOSINGS`, that works), longest first.

    Whole lines are read at once and tried at their ends; in the last line (where a cut falls)
    or a line the grammar refuses, only the longest start that can be closed counts, and the
    walk stops at the first character refused: for a text written under the grammar and cut
    short it sees the longest start and every line's end, and a long text costs a trial a line,
    and a cut line a few trials back from where it was cut, not a trial a character."""
    import xgrammar  # here: it loads torch, which a run against an endpoint need not pay for

    matcher = xgrammar.GrammarMatcher(_compiled(grammar), terminate_without_stop_token=True)
    points: list[tuple[int, str]] = []
    *lines, last = text.split("\n")
    offset = 0
    for line in lines:
        ahead = matcher.fork()
        if not ahead.accept_string(line):
            last = line
            break
        end = offset + len(line)
        repeat_closed = _closes(ahead, REPEAT_CLOSING)
        if not ahead.accept_string("\n"):
            points += [(end, REPEAT_CLOSING)] if repeat_closed else []
            return points[::-1]
        matcher, offset = ahead, end + 1
        points += [(offset, "")] if matcher.is_completed() else \
            [(end, REPEAT_CLOSING)] if repeat_closed else []
    points += _last_point_along(matcher, last, offset)
    return points[::-1]


def _closes(matcher: xgrammar.GrammarMatcher, closing: str) -> bool:
    trial = matcher.fork()
    return bool(trial.accept_string(closing) and trial.is_completed())


# How far apart `_last_point_along` keeps copies of the matcher along a line.
_CHECKPOINT_STRIDE = 16


def _last_point_along(matcher: xgrammar.GrammarMatcher, line: str,
                      offset: int) -> list[tuple[int, str]]:
    """The longest start of `line` (no line break in it, starting at `offset` of the text) that
    one of `CUT_CLOSINGS` closes, as a one-item list (none when no start can be closed);
    `matcher` has read the text before it. The line is read once, keeping a copy of the matcher
    every few characters; starts are then tried from the longest back, each from the copy
    before it, so a cut near a point costs a few trials, not one a character of the line."""
    checkpoints = [(0, matcher.fork())]
    read = 0
    for character in line:
        if not matcher.accept_string(character):
            break
        read += 1
        if read % _CHECKPOINT_STRIDE == 0:
            checkpoints.append((read, matcher.fork()))
    for end in range(read, 0, -1):  # its start is the line before's end, tried there
        while checkpoints[-1][0] > end:
            checkpoints.pop()
        start, copy = checkpoints[-1]
        trial = copy.fork()
        trial.accept_string(line[start:end])
        closing = next((closing for closing in CUT_CLOSINGS if _closes(trial, closing)), None)
        if closing is not None:
            return [(offset + end, closing)]
    return []


@lru_cache(maxsize=4)
def _compiled(grammar: str) -> xgrammar.CompiledGrammar:
    """The grammar compiled for text alone (no vocabulary), once per grammar."""
    import xgrammar

    compiler = xgrammar.GrammarCompiler(xgrammar.TokenizerInfo([]), cache_enabled=False)
    return compiler.compile_grammar(grammar)


def tune_grammar(rules: Mapping[str, str] | None = None, *, read: bool = False) -> str:
    """The grammar of one tune, as a model may write it, with `rules` swapped in.

    `read=True` widens it to tunes written elsewhere (a corpus, a file): what an answer leaves out
    because extraction would read it as prose (user-defined decoration letters, lines without
    notes, a lone colon) or because it refers to other parts of the tune (a header `P:` order of
    parts, which abc2midi checks against the parts the body defines), runs of empty bars and
    `I:` lines.
    """
    swaps = {"root": "tune", **(READ_RULES if read else {})}
    return replace_rules(grammar_file_text(), {**swaps, **(rules or {})})


def rule_names(grammar: str) -> list[str]:
    """The rules a grammar defines, in order."""
    return [match["name"] for match in _RULE.finditer(grammar)]


def replace_rules(grammar: str, rules: Mapping[str, str]) -> str:
    """`grammar` with each named rule's definition replaced, e.g. `{"key": '"D"'}`.

    A rule runs from its `name ::=` at the start of a line to the next rule or to the end;
    comments between rules stay where they are.
    """
    starts = list(_RULE.finditer(grammar))
    unknown = sorted(set(rules) - {match["name"] for match in starts})
    if unknown:
        raise GrammarError(f"the grammar has no rule named {', '.join(unknown)}")
    pieces: list[str] = []
    position = 0
    for index, match in enumerate(starts):
        name = match["name"]
        if name not in rules:
            continue
        end = starts[index + 1].start() if index + 1 < len(starts) else len(grammar)
        body = grammar[match.start():end]
        kept = _trailing_comments(body)
        pieces += [grammar[position:match.start()], f"{name} ::= {rules[name]}\n", kept]
        position = end
    pieces.append(grammar[position:])
    return "".join(pieces)


def _trailing_comments(rule_text: str) -> str:
    """The comment and blank lines after a rule's last line, which belong to what follows."""
    lines = rule_text.split("\n")
    tail: list[str] = []
    while lines and (not lines[-1].strip() or lines[-1].startswith("#")):
        tail.insert(0, lines.pop())
    return "\n".join(tail)


def rule_definition(grammar: str, name: str) -> str:
    """What rule `name` is defined as (the text after its `::=`, on one line), so a run's
    grammar can extend a rule as the file has it."""
    starts = list(_RULE.finditer(grammar))
    for index, match in enumerate(starts):
        if match["name"] == name:
            end = starts[index + 1].start() if index + 1 < len(starts) else len(grammar)
            body = grammar[match.end():end]
            kept = _trailing_comments(body)
            lines = body[:len(body) - len(kept)].split("\n")
            return " ".join(line.strip() for line in lines if line.strip())
    raise GrammarError(f"the grammar has no rule named {name}")


_PIECE = re.compile(r'''\s+|\#[^\n]*|(?P<string>"(?:\\.|[^"\\])*")|(?P<chars>\[(?:\\.|[^\]\\])*\])
    |(?P<repeat>\{\s*\d+\s*(?:,\s*\d*\s*)?\})|(?P<name>[A-Za-z][\w-]*)|(?P<op>::=|[|()?*+])''',
                    re.VERBOSE)


def longest_bytes(grammar: str, rule: str = "root") -> float:
    """The most UTF-8 bytes a text of `rule` can hold (`math.inf` when unbounded).

    A byte-level tokenizer can spend one token on each byte, so this is the worst case in
    tokens of a model that writes under the grammar: the bound a max_tokens must exceed for a
    constrained answer to always finish. A character class that admits non-ASCII counts 4 bytes.
    """
    rules: dict[str, list[tuple[str, str]]] = {}
    pieces = [(match.lastgroup or "", match[match.lastgroup]) for match in _PIECE.finditer(grammar)
              if match.lastgroup]
    name = ""
    for index, piece in enumerate(pieces):
        if piece[0] == "name" and index + 1 < len(pieces) and pieces[index + 1] == ("op", "::="):
            name = piece[1]
            rules[name] = []
        elif piece != ("op", "::="):
            rules[name].append(piece)
    return _Longest(rules).rule(rule)


class _Longest:
    """`longest_bytes`' walk: each rule's longest text, memoised; a rule met again while it is
    being measured is recursive, so unbounded."""

    def __init__(self, rules: dict[str, list[tuple[str, str]]]) -> None:
        self._rules = rules
        self._known: dict[str, float] = {}
        self._open: set[str] = set()
        self._pieces: list[tuple[str, str]] = []
        self._at = 0

    def rule(self, name: str) -> float:
        if name in self._known:
            return self._known[name]
        if name in self._open:
            return math.inf
        self._open.add(name)
        outer = self._pieces, self._at
        self._pieces, self._at = self._rules[name], 0
        length = self._choice()
        self._pieces, self._at = outer
        self._open.discard(name)
        self._known[name] = length
        return length

    def _peek(self) -> tuple[str, str] | None:
        return self._pieces[self._at] if self._at < len(self._pieces) else None

    def _choice(self) -> float:
        longest = self._sequence()
        while self._peek() == ("op", "|"):
            self._at += 1
            longest = max(longest, self._sequence())
        return longest

    def _sequence(self) -> float:
        total = 0.0
        while (piece := self._peek()) is not None and piece not in (("op", "|"), ("op", ")")):
            total += self._repeated()
        return total

    def _repeated(self) -> float:
        length = self._atom()
        while (piece := self._peek()) is not None and (
                piece[0] == "repeat" or piece in (("op", "?"), ("op", "*"), ("op", "+"))):
            self._at += 1
            most = piece[1].strip("{} ").split(",")[-1].strip()
            if piece[1] in ("*", "+") or most == "":
                length = math.inf if length else 0.0
            elif piece[1] != "?":
                length *= int(most)
        return length

    def _atom(self) -> float:
        kind, text = self._pieces[self._at]
        self._at += 1
        if kind == "string":
            return float(len(_unescaped(text[1:-1]).encode()))
        if kind == "chars":
            body = _unescaped(text[1:-1])
            return 4.0 if body.startswith("^") else float(max(len(c.encode()) for c in body))
        if kind == "name":
            return self.rule(text)
        length = self._choice()  # "(": a group, closed by ")"
        self._at += 1
        return length


def _unescaped(text: str) -> str:
    return re.sub(r"\\x([0-9a-fA-F]{2})|\\u([0-9a-fA-F]{4})|\\(.)",
                  lambda m: chr(int(m[1] or m[2], 16)) if m[1] or m[2] else
                  {"n": "\n", "t": "\t", "r": "\r"}.get(m[3], m[3]), text)
