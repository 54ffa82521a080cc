"""The ABC grammar is sized to each call's token budget, so a constrained tune always begins
inside it: whatever a model writes under the grammar, the budget leaves a tune that
parse-checks without an error.

The oracle is abc2midi's reading of what the compose and parse-check steps make of an answer cut
at the budget (`close_cut_answer`, then `fit_to_limits` as parse-check applies it), measured in
UTF-8 bytes, the most tokens a byte-level tokenizer can spend on it."""

from __future__ import annotations

import logging
import re

import pytest
import xgrammar

from img2music.graph.context import Context
from img2music.graph.models import answer_constraint
from img2music.tools.abc.budget import LEAD_SHARE, SIZED, BudgetError, lead_bytes
from img2music.tools.abc.check import compile_abc
from img2music.tools.abc.close import close_cut_answer, fit_to_limits
from img2music.tools.abc.extract import extract_abc
from img2music.tools.abc.grammar import (
    CUT_CLOSINGS,
    answer_grammar,
    grammar_file_text,
    matches,
    replace_rules,
    rule_definition,
    tune_grammar,
)
from tests.grammar_walk import GrammarWalk
from tests.needs import needs_programs
from tests.scripted import ScriptedChatModel
from tests.test_close import grammatical_replies
from tests.test_grammar import own_tunes

# The smallest budget the shipped grammar can be sized to (the error below names it), the
# default, and one for think mode's longer answers.
LEAST_BUDGET = 2210
BUDGETS = [(LEAST_BUDGET, False), (4096, False), (8192, False), (8192, True), (16384, True)]
WALKS = 12


def test_each_sized_rule_is_one_repetition_in_the_grammar_file() -> None:
    for rule in SIZED:
        assert re.fullmatch(r".+\{\d+,\d+\}", rule_definition(grammar_file_text(), rule)), rule


@pytest.mark.parametrize(("budget", "thinking"), BUDGETS)
def test_what_comes_before_the_music_fits_the_budget(budget: int, thinking: bool) -> None:
    grammar = Context(vlm_max_tokens=budget, vlm_thinking=thinking).answer_grammar()
    assert lead_bytes(grammar) <= budget * LEAD_SHARE
    assert lead_bytes(answer_grammar(thinking=thinking)) > budget  # the file's bounds do not


def lead_ends(text: str, matcher: xgrammar.GrammarMatcher) -> bool:
    """Whether an answer now ends its lead: a key line starts (the header's last line), a line
    of text ends (a wide character is one only at a line's end), or the answer could end here,
    its tune closed as a cut tune is. The walks below put this off as long as they can, as a
    model would that spends its whole budget before the music."""
    if text.endswith("\nK") or not text[-1].isascii():
        return True
    ending = "```\nMotivation: a"
    return any(_ends(matcher, closing + ending) for closing in ("", *CUT_CLOSINGS))


def _ends(matcher: xgrammar.GrammarMatcher, text: str) -> bool:
    trial = matcher.fork()
    return bool(trial.accept_string(text) and trial.is_completed())


@needs_programs("abc2midi")
@pytest.mark.parametrize("thinking", [False, True])
def test_every_answer_cut_at_the_budget_leaves_a_tune_without_an_error(thinking: bool) -> None:
    """Walks of the grammar sized to the least budget, which never stop by choice (as a
    random-weight model writes), cut where their bytes reach the budget."""
    budget = LEAST_BUDGET
    walk = GrammarWalk(Context(vlm_max_tokens=budget, vlm_thinking=thinking).answer_grammar())
    failures, cut = [], 0
    for seed in range(WALKS):
        answer = walk.start(seed, max_bytes=budget, avoid=lead_ends)
        closed = close_cut_answer(tune_grammar(), answer)
        if closed is None:  # the answer is whole: its tune block was closed
            tune = extract_abc(answer).abc
            if tune is None or "\n```" not in answer.partition("```abc\n")[2]:
                failures.append(f"seed {seed}: no tune in {answer[-300:]!r}")
                continue
        else:
            tune, cut = closed.abc, cut + 1
        compiled = compile_abc(tune)
        fitted = fit_to_limits(tune_grammar(), compiled)
        check = (fitted[0] if fitted else compiled).check
        failures += [f"seed {seed}: {error.message}" for error in check.errors]
    assert not failures, "\n".join(failures[:5])
    assert cut >= WALKS // 4, "the budget cut some walks inside their tune"


def test_the_sized_grammar_keeps_the_leads_real_models_write() -> None:
    """At the default budget, every real reply's tune and every tune of the tests that the
    grammar accepts (a string quartet with four named voices and their programs among them) is
    still accepted: sizing cuts what models never reach."""
    sized = replace_rules(Context().answer_grammar(), {"root": "tune"})
    tunes = [*grammatical_replies(), *((where, tune) for where, tune in own_tunes()
                                       if matches(tune_grammar(), tune))]
    assert len(tunes) >= 40
    refused = [name for name, tune in tunes if not matches(sized, tune)]
    assert not refused


def test_a_budget_too_small_for_the_grammar_is_refused_in_one_line_when_it_is_on() -> None:
    with pytest.raises(BudgetError) as refused:
        Context(vlm_grammar="on", vlm_max_tokens=LEAST_BUDGET - 1)
    message = str(refused.value)
    assert message.startswith("vlm_max_tokens: ") and "\n" not in message
    assert f"to {LEAST_BUDGET:,} or more" in message and "IMG2MUSIC_VLM_GRAMMAR=off" in message
    Context(vlm_grammar="on", vlm_max_tokens=LEAST_BUDGET)
    Context(vlm_grammar="off", vlm_max_tokens=100)


def test_with_auto_a_budget_too_small_composes_without_the_grammar(
        caplog: pytest.LogCaptureFixture) -> None:
    context = Context(vlm_grammar="auto", vlm_max_tokens=LEAST_BUDGET - 1)
    model = ScriptedChatModel(replies=[])  # the local backend applies the grammar under auto
    with caplog.at_level(logging.WARNING):
        assert answer_constraint(context, model, backend="local") is None
    assert f"to {LEAST_BUDGET:,} or more" in caplog.text
    roomy = Context(vlm_grammar="auto", vlm_max_tokens=LEAST_BUDGET)
    constraint = answer_constraint(roomy, model, backend="local")
    assert constraint is not None and constraint.grammar == roomy.answer_grammar()
