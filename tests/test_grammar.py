"""The ABC grammar: it compiles, it accepts real tunes, it refuses broken ones, and nothing it
accepts has an error at parse-check.

"Error" is parse-check's error tier (`ParseCheck.errors`, defined in `img2music.tools.abc.check`):
what stops a tune being read (unclosed chords, grace groups and quotes, garbage or prose in the
music, a missing K:, a note the reference parser cannot read, no notes, the size limits). Faults,
which a player can still play (bars that do not fill the meter, repeats and endings in an order
abc2midi complains about), are allowed. The promise holds for what a model may write; the wider
grammar for tunes read from elsewhere (`tune_grammar(read=True)`) only measures the corpus.

The one error a grammar cannot rule out is a size limit the operator sets: a context-free grammar
bounds each construct (lines, bars a line, notes a bar, a note's length, the slowest tempo) but
cannot add up a whole tune's seconds, so random walks, which pick the longest notes as readily as
the shortest, are checked with the playing-time limit lifted (`max_tune_seconds`); the note, bar
and byte limits stay as shipped.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest
import xgrammar

from img2music.settings import Settings
from img2music.tools.abc.check import ParseCheck, check_abc, compile_abc
from img2music.tools.abc.extract import extract_abc
from img2music.tools.abc.grammar import (
    GrammarError,
    answer_grammar,
    longest_bytes,
    replace_rules,
    rule_names,
    tune_grammar,
)
from img2music.tools.abc.repair import repair_abc
from img2music.tools.abc.scan import split_tunes
from img2music.tools.corpus.music21_corpus import iter_corpus_tunes
from tests.grammar_walk import GrammarWalk
from tests.needs import needs_programs
from tests.test_check import GOOD
from tests.tiny_vlm import tiny_tokenizer

TESTS = Path(__file__).parent
WALKS = 150
NO_TIME_LIMIT = Settings(max_tune_seconds=10**9)


def errors(check: ParseCheck) -> list[str]:
    return [error.one_line() for error in check.errors]


@cache
def matcher_for(grammar: str) -> xgrammar.CompiledGrammar:
    compiler = xgrammar.GrammarCompiler(xgrammar.TokenizerInfo([]), cache_enabled=False)
    return compiler.compile_grammar(grammar)


def accepts(grammar: str, text: str) -> bool:
    matcher = xgrammar.GrammarMatcher(matcher_for(grammar), terminate_without_stop_token=True)
    return matcher.accept_string(text) and matcher.is_terminated()


def answer(tune: str, before: str = "Here is my tune.\n\n") -> str:
    return f"{before}```abc\n{tune}```\nMotivation: a calm line for a calm picture.\n"


def test_each_grammar_compiles_for_a_real_tokenizer() -> None:
    info = xgrammar.TokenizerInfo.from_huggingface(tiny_tokenizer())
    compiler = xgrammar.GrammarCompiler(info)
    for grammar in (answer_grammar(), tune_grammar(), tune_grammar(read=True)):
        assert compiler.compile_grammar(grammar).memory_size_bytes > 0


def test_the_answer_is_free_text_one_abc_block_and_a_motivation() -> None:
    grammar = answer_grammar()
    assert accepts(grammar, answer(GOOD))
    assert accepts(grammar, answer(GOOD, before=""))
    assert not accepts(grammar, answer(GOOD).replace("Motivation: ", "Why: "))
    assert not accepts(grammar, answer(GOOD) + "```abc\n" + GOOD + "```\n")
    assert not accepts(grammar, answer(GOOD, before="<think>hmm</think>\n"))
    assert accepts(grammar, answer(GOOD, before="<think>\n\n</think>\n\n"))  # Keye's /no_think
    thinking = answer_grammar(thinking=True)
    assert accepts(thinking, answer(GOOD, before="<think>A march? No: D minor, slow.</think>\n"))
    assert accepts(thinking, answer(GOOD))  # a server's reasoning parser took the thought
    assert not accepts(thinking, answer(GOOD, before="<think>one</think><think>two</think>"))
    assert not accepts(grammar, answer(GOOD, before="Here it is.\\nA calm tune.\n"))
    assert not accepts(grammar, answer(GOOD).replace("a calm line", "x" * 1_600))
    extracted = extract_abc(answer(GOOD))
    assert extracted.abc == GOOD
    assert extracted.motivation.startswith("Here is my tune.")


def test_a_rule_is_replaced_by_name_so_a_run_can_fix_its_key() -> None:
    in_d = answer_grammar({"key": '"D"'})
    assert accepts(in_d, answer(GOOD.replace("K:G", "K:D")))
    assert not accepts(in_d, answer(GOOD))
    assert "root" in rule_names(in_d) and "key" in rule_names(in_d)
    with pytest.raises(GrammarError, match="no rule named tempo-of-the-day"):
        replace_rules(in_d, {"tempo-of-the-day": '"96"'})


def own_tunes() -> list[tuple[str, str]]:
    """Every tune the project's tests write out (a string starting X:), split into tunes."""
    found = []
    for path in sorted(TESTS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and node.value.startswith("X:"):
                lines = node.value.split("\n")
                for first, last in split_tunes(lines):
                    text = "\n".join(lines[first:last + 1]).strip("\n") + "\n"
                    found.append((f"{path.name}:{node.lineno}", text))
    return found


def test_every_tune_of_the_tests_that_the_checker_accepts_is_in_the_grammar() -> None:
    valid = [(where, tune) for where, tune in own_tunes() if check_abc(tune).ok]
    assert len(valid) >= 25
    # A font directive is how one test attacks the renderer; the grammar keeps directives out.
    directive = re.compile(r"^%%(?!MIDI program|score )", re.MULTILINE)
    refused = [where for where, tune in valid
               if not accepts(tune_grammar(), tune) and not directive.search(tune)]
    assert not refused
    assert all(not accepts(tune_grammar(), tune) for _, tune in valid if directive.search(tune))


@pytest.mark.parametrize(
    ("damage", "change"),
    [
        ("an unclosed chord", lambda tune: tune.replace("[ce]2", "[ce2", 1)),
        ("an unclosed grace group", lambda tune: tune.replace("[ce]2", "{ce2", 1)),
        ("an unclosed quote", lambda tune: tune.replace("[ce]2", '"Am [ce]2', 1)),
        ("a garbage line", lambda tune: tune.replace("K:G\n", "K:G\nthe melody rises here.\n")),
        ("a missing K:", lambda tune: tune.replace("K:G\n", "")),
        ("music before K:", lambda tune: tune.replace("Q:1/4=96\n", "Q:1/4=96\nABc|\n")),
        ("a file-reading directive", lambda tune: tune.replace("K:G\n",
                                                               "%%abc-include x.abc\nK:G\n")),
        ("a line that reads as a field", lambda tune: tune.replace("D2 | G2", "A:|\nD2 | G2")),
        ("a second X: line", lambda tune: tune + "X:2\n"),
    ],
)
def test_damaged_tunes_are_refused(damage: str, change: Callable[[str], str]) -> None:
    assert accepts(tune_grammar(), GOOD)
    damaged = change(GOOD)
    assert damaged != GOOD, damage
    assert not accepts(tune_grammar(), damaged), damage
    assert not accepts(answer_grammar(), answer(damaged)), damage


@needs_programs("abc2midi")
def test_the_grammar_reads_a_sample_of_the_corpus_tunes_the_checker_accepts() -> None:
    """Every 16th music21 tune (98.3% of 786); `python -m benchmarks.grammar` measures all of them
    (99.0% of 12,585)."""
    sample = [tune for index, tune in enumerate(iter_corpus_tunes()) if index % 16 == 0]
    valid = [tune for tune in sample if check_abc(tune.text).ok]
    refused = [tune.id for tune in valid if not accepts(tune_grammar(read=True), tune.text)]
    assert len(valid) >= 600
    assert 1 - len(refused) / len(valid) >= 0.98, refused


def test_no_answer_the_grammar_accepts_has_an_error_at_parse_check() -> None:
    """The compose node's path: extraction, mechanical repair, parse-check."""
    walk = GrammarWalk(answer_grammar())
    failures = []
    for seed in range(WALKS):
        text = walk.walk(seed)
        extracted = extract_abc(text)
        if extracted.abc is None:
            failures.append(f"seed {seed}: no tune extracted")
            continue
        found = errors(compile_abc(repair_abc(extracted.abc).abc, settings=NO_TIME_LIMIT).check)
        failures += [f"seed {seed}: {error}" for error in found]
    assert not failures, "\n".join(failures[:10])


def test_no_tune_the_grammar_accepts_has_an_error_at_parse_check() -> None:
    walk = GrammarWalk(tune_grammar())
    failures = []
    for seed in range(WALKS):
        tune = walk.walk(seed)
        checked = compile_abc(tune, settings=NO_TIME_LIMIT).check
        failures += [f"seed {seed}: {error}" for error in errors(checked)]
    assert not failures, "\n".join(failures[:10])


def test_the_longest_text_of_a_rule_is_counted_in_bytes_the_worst_case_in_tokens() -> None:
    grammar = 'root ::= "ab" [x-z]{2,3} ("\u00e9" | "\\n")? tail\ntail ::= [^a]{0,2}'
    assert longest_bytes(grammar) == 2 + 3 + 2 + 2 * 4  # é is 2 bytes; [^a] may be 4
    assert longest_bytes(grammar, "tail") == 8
    assert longest_bytes('root ::= "a" root?') == float("inf")
    assert longest_bytes('root ::= "a"+') == float("inf")
    shipped = answer_grammar()
    assert longest_bytes(shipped, "preamble") == 2 + 300  # ASCII: a byte a character
    assert longest_bytes(shipped, "motivation") == 12 + 1500 * 4 + 1  # any character
    assert longest_bytes(shipped, "key-line") < 500
    thought = longest_bytes(answer_grammar(thinking=True), "free-thought")
    assert thought == len("<think></think>") + 16384 + 4  # a bounded ASCII thought
