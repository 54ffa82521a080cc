"""The answer grammar sized to a call's token budget, so that a constrained tune always begins
inside it.

Closing (`img2music.tools.abc.close`) ends any start of a constrained tune once its first note is
written, so a token budget can only leave a composition without a tune while what comes before
that point is still being written: the thought, the free text, the header, the voice
declarations and the first line's leads. The grammar bounds each of these, and this module
scales those bounds (`SIZED`) down until the longest such lead fits `LEAD_SHARE` of the budget.
Lengths are UTF-8 bytes (`longest_bytes`): a byte-level tokenizer may spend a token on each, so a
lead that fits in bytes fits in tokens whatever the model writes.

The lead is measured on the grammar with everything that comes after its first closing point
left out (`LEAD_ONLY`). Each swap there drops only what follows a point where the tune can
already be closed, so the measure is an upper bound:
- the music after the first line's first pitched thing (the rest of its bar and line, the lines
  and sections after it, the repeat's close, the motivation): a line break ends the tune there;
- in the slur that starts a tune, what follows its first note (`slur-content`), and in a broken
  rhythm across a parenthesis that starts a tune, what follows its first note or pair
  (`slur-lead`, `slur-rest`): a parenthesis closes them there.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache

from img2music.tools.abc.grammar import GrammarError, longest_bytes, replace_rules, rule_definition

# At most this share of a call's tokens goes to what comes before the music: the rest is the
# tune's at least, however the model spends its lead.
LEAD_SHARE = 0.75

# Each sized rule (a definition `unit{m,n}` in the grammar file) and two bounds for it: the
# least a useful tune needs (a title, a meter, a unit and a tempo), below which a budget is
# refused, and an ample one, enough for the leads real models write (a paragraph; fourteen header
# lines of 40 characters: a string quartet's title, meter, unit, tempo and four named voices with
# their programs need twelve). Between the file's bounds and the ample ones all are scaled alike,
# and so between the ample and the least.
SIZED: dict[str, tuple[int, int]] = {
    "thought-text": (0, 1024),  # think mode's reasoning, in ASCII characters
    "preamble-text": (1, 80),
    "header-lines": (4, 14),
    "header-text": (24, 40),
    "lead-comment-text": (0, 64),  # a caption, as %caption lines in the corpus
    "field-comment": (0, 0),
    "quoted-pieces": (4, 12),  # a voice's name
    "annotation-text": (4, 12),
    "leading-field-lines": (0, 2),
    "voice-declarations": (0, 4),
    "voice-leading-lines": (0, 2),
    "line-start": (0, 4),
    "gap": (1, 2),
}

LEAD_ONLY: dict[str, str] = {
    **{rule: '""' for rule in (
        "measure", "measure-end", "measured-tail", "end-bar", "line-tail", "safe-line-tail",
        "closing", "closing-repeat", "closing-line", "repeated-line", "section",
        "unvoiced-section", "closing-comments", "motivation", "slur-content", "slur-lead",
        "slur-rest")},
    "line-end": '"\\n"',
}

_REPETITION = re.compile(r"(?P<unit>.+)\{(?P<least>\d+),(?P<most>\d+)\}")


class BudgetError(GrammarError):
    """A call's token budget is too small for a constrained tune to begin inside it."""


def lead_bytes(grammar: str) -> float:
    """The most bytes an answer under `grammar` (the answer grammar) can hold before its tune can
    first be closed: an upper bound (see the module's docstring)."""
    return longest_bytes(replace_rules(grammar, LEAD_ONLY))


def budget_rules(grammar: str, max_tokens: int) -> dict[str, str]:
    """The `SIZED` rules of `grammar` bounded so that its lead fits `LEAD_SHARE` of
    `max_tokens`: as near the grammar's own bounds as that allows, all scaled alike.

    Raises BudgetError when even the least bounds of `SIZED` do not fit."""
    share = math.floor(max_tokens * LEAD_SHARE)
    ranges = {rule: found for rule, bounds in SIZED.items()
              if (found := _range(grammar, rule, bounds)) is not None}

    def sized(scale: float) -> dict[str, str]:
        """Scale 1 keeps the file's bounds, 0 the ample ones of `SIZED`, -1 the least."""
        rules = {}
        for rule, (unit, fewest, least, ample, most) in ranges.items():
            low, high, part = (ample, most, scale) if scale >= 0 else (least, ample, 1 + scale)
            rules[rule] = f"{unit}{{{fewest},{low + math.floor((high - low) * part)}}}"
        return rules

    def fits(scale: float) -> bool:
        return lead_bytes(replace_rules(grammar, sized(scale))) <= share

    if fits(1.0):
        return {}
    if not fits(-1.0):
        least = lead_bytes(replace_rules(grammar, sized(-1.0)))
        raise BudgetError(
            f"a budget of {max_tokens} tokens a call is too small for a constrained tune: "
            f"what comes before its first note can take {least:,.0f} tokens; raise "
            f"IMG2MUSIC_VLM_MAX_TOKENS to {math.ceil(least / LEAD_SHARE):,} or more, or turn "
            "the grammar off (IMG2MUSIC_VLM_GRAMMAR=off)")
    low, high = -1.0, 1.0
    for _ in range(16):  # to about 1/32,000 of the range: finer than any bound's step
        middle = (low + high) / 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return sized(low)


def _range(grammar: str, rule: str,
           bounds: tuple[int, int]) -> tuple[str, int, int, int, int] | None:
    """A sized rule's unit, its fewest repetitions, its least and ample bounds (`bounds`, kept
    between the fewest and the most) and its most, as `grammar` defines it; None for a rule that
    a run's rules made something other than one repetition (it is left as they made it)."""
    match = _REPETITION.fullmatch(rule_definition(grammar, rule))
    if match is None:
        return None
    fewest, most = int(match["least"]), int(match["most"])
    least, ample = (min(max(bound, fewest), most) for bound in bounds)
    return match["unit"], fewest, least, ample, most


@lru_cache(maxsize=32)
def sized_answer_grammar(grammar: str, max_tokens: int) -> str:
    """`grammar` (an answer grammar) with its lead fitted to `max_tokens` (`budget_rules`),
    worked out once per grammar and budget."""
    return replace_rules(grammar, budget_rules(grammar, max_tokens))
