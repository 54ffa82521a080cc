"""A tune written under the ABC grammar that ran past a limit, cut back to where its grammar can
end it, so a constrained composition whose music has begun ends without an error-tier
diagnostic.

The grammar (`prompts/abc.ebnf`) bounds each construct but cannot add up a whole tune, so two
limits can still stop a constrained model's tune: the call's token budget (the answer is cut,
mid-bar or mid-chord) and parse-check's size limits (`max_notes`, `max_bars`,
`max_tune_seconds`, `max_abc_bytes`, the operator's settings). Every start of a constrained
answer is a start of the grammar's language, so the points where a start can be closed (a line
break after it, or ` :|` then one, ending a repeat the cut left open; in the last line also `]`
or `)` first, closing the chord or slurs the cut fell in) are found by walking the
text once with the grammar's matcher: at each line's end, and at every character of the last
line, where a cut falls. The longest such start keeps the most music; the longest
that also fits the size limits is found by halving, as fewer characters never hold more notes,
bars or playing time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from img2music.settings import Settings, get_settings
from img2music.tools.abc.check import CompiledAbc, compile_abc
from img2music.tools.abc.grammar import closing_points

logger = logging.getLogger(__name__)

# No limit that a text of at most max_abc_bytes can reach: what a tune holds beyond the size
# limits is then measured, not refused.
_UNLIMITED = {"max_notes": 10**9, "max_bars": 10**9, "max_tune_seconds": 1e12}


@dataclass(frozen=True)
class Closed:
    """A tune cut back: the text kept, and what was done, in the words a report shows."""

    abc: str
    note: str


FENCE = "```abc\n"
THOUGHT_END = "</think>"


def close_cut_answer(grammar: str, answer: str) -> Closed | None:
    """The tune of an answer written under the answer grammar and cut short inside its ```abc
    block, closed where the tune's `grammar` can end it. None when the block was closed (the
    tune is whole) or nothing in it can be closed.

    The grammar writes one fence, after the thought, and nothing but the tune inside it, so the
    tune is read straight from the text: extraction's guesses at what is music are not needed
    (a tune cut in its first line may look like prose to them)."""
    after_thought = answer[answer.rfind(THOUGHT_END) + len(THOUGHT_END):] \
        if THOUGHT_END in answer else answer
    start = after_thought.find(FENCE)
    if start < 0:
        return None
    tune = after_thought[start + len(FENCE):]
    if "\n```" in tune:
        return None
    return close_cut_tune(grammar, tune)


def close_cut_tune(grammar: str, abc: str) -> Closed | None:
    """`abc`, cut short by the token limit, closed at its longest start that `grammar` can end
    (None when no start can be: then no note of music was complete)."""
    points = closing_points(grammar, abc)
    if not points:
        return None
    end, closing = points[0]
    what = f"with {closing.strip()!r} after the cut, " if closing.strip() else ""
    return Closed(_text(abc, points[0]),
                  f"closed the tune the token limit cut, {what}where its grammar can end it "
                  f"(kept {end} of {len(abc)} characters)")


def fit_to_limits(grammar: str, compiled: CompiledAbc, *,
                  settings: Settings | None = None) -> tuple[CompiledAbc, str] | None:
    """A tune, as parse-check compiled it under `settings` (the operator's when not given),
    whose only errors are the size limits, cut at the longest start that `grammar` can end and
    that fits them: the compiled tune and a note of what was cut. None when it fits them, when
    something else is wrong with it, or when no start fits."""
    if compiled.check.ok:
        return None
    settings = settings or get_settings()
    abc = compiled.abc
    whole = compile_abc(abc, settings=settings.model_copy(update=_UNLIMITED)).check
    if not whole.ok:
        return None

    def fitting(point: tuple[int, str]) -> CompiledAbc | None:
        cut = compile_abc(_text(abc, point), settings=settings)
        return cut if cut.check.ok else None

    kept = _longest(closing_points(grammar, abc), fitting)
    if kept is None:
        return None
    note = (f"the tune ({whole.bars} bars) was over the size limits, so it was cut where its "
            f"grammar can end it, within them ({kept.check.bars} bars kept)")
    logger.info("%s", note)
    return kept, note


def _text(abc: str, point: tuple[int, str]) -> str:
    end, closing = point
    return abc[:end] + closing


def _longest(points: list[tuple[int, str]],
             fitting: Callable[[tuple[int, str]], CompiledAbc | None]) -> CompiledAbc | None:
    """What `fitting` makes of the first of `points` (longest first) it does not refuse, found by
    halving: a shorter start fits when a longer one does."""
    low, high = 0, len(points)  # the first that fits is in points[low:high], if any does
    found: CompiledAbc | None = None
    while low < high:
        middle = (low + high) // 2
        result = fitting(points[middle])
        if result is not None:
            found, high = result, middle
        else:
            low = middle + 1
    return found
