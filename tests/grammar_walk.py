"""Random strings from a grammar, to test what every string it accepts is (test support).

xgrammar's matcher says which tokens of a small vocabulary may come next; a seeded random choice
picks one. The vocabulary is every printable ASCII character, a newline, a few non-ASCII
characters and a stop token, so a walk can reach every corner of an ABC grammar; newlines and
the stop are favoured, or walks would run to every bound.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np
import xgrammar

STOP = "<stop>"
VOCABULARY = [chr(code) for code in range(32, 127)] + ["\n", "é", "ñ", "你", STOP]
NEWLINE = VOCABULARY.index("\n")
STOP_ID = VOCABULARY.index(STOP)
AVOIDING_TRIES = 8  # next characters a walk that avoids something tries before giving in


class GrammarWalk:
    """Walks one grammar; `walk(seed)` returns the string of one walk."""

    def __init__(self, grammar: str, *, stop_chance: float = 0.3,
                 newline_chance: float = 0.1) -> None:
        info = xgrammar.TokenizerInfo(VOCABULARY, xgrammar.VocabType.RAW, stop_token_ids=[STOP_ID])
        compiler = xgrammar.GrammarCompiler(info, cache_enabled=False)
        self._compiled = compiler.compile_grammar(grammar)
        self._stop_chance = stop_chance
        self._newline_chance = newline_chance

    def walk(self, seed: int, *, max_tokens: int = 50_000) -> str:
        rng = random.Random(seed)
        matcher = xgrammar.GrammarMatcher(self._compiled)
        bitmask = xgrammar.allocate_token_bitmask(1, len(VOCABULARY))
        written: list[str] = []
        for _ in range(max_tokens):
            allowed = _allowed(matcher, bitmask)
            if STOP_ID in allowed and (rng.random() < self._stop_chance or allowed == [STOP_ID]):
                return "".join(written)
            choices = [token for token in allowed if token != STOP_ID]
            token = (NEWLINE if NEWLINE in choices and rng.random() < self._newline_chance
                     else rng.choice(choices))
            _accept(matcher, token)
            written.append(VOCABULARY[token])
        raise AssertionError(f"a walk ran past {max_tokens} tokens: the grammar is unbounded")

    def start(self, seed: int, *, max_bytes: int,
              avoid: Callable[[str, xgrammar.GrammarMatcher], bool] | None = None) -> str:
        """The start of a walk that never stops or breaks a line by choice, so each line runs
        to the grammar's bounds (a random-weight model's lines come near them), cut where its
        UTF-8 text reaches `max_bytes`: what a byte-level tokenizer's budget of `max_bytes`
        tokens keeps at worst. The whole walk when it ends first (the grammar allows nothing
        more).

        With `avoid`, each next character is one (of a few tried) after which `avoid` is false
        of the text and the matcher, for as long as one is found: an adversary that puts off
        what `avoid` names (a point where the tune could be closed) as long as it can."""
        rng = random.Random(seed)
        matcher = xgrammar.GrammarMatcher(self._compiled)
        bitmask = xgrammar.allocate_token_bitmask(1, len(VOCABULARY))
        written: list[str] = []
        size = 0
        while True:
            choices = [token for token in _allowed(matcher, bitmask) if token != STOP_ID]
            if not choices:
                return "".join(written)
            candidates = [token for token in choices if token != NEWLINE] or choices
            rng.shuffle(candidates)
            token = candidates[0]
            if avoid is not None:
                text = "".join(written)
                avoiding = next((candidate for candidate in candidates[:AVOIDING_TRIES]
                                 if not avoid(text + VOCABULARY[candidate],
                                              _after(matcher, candidate))), None)
                if avoiding is None:
                    avoid = None  # met at last: the rest of the walk is plain
                else:
                    token = avoiding
            size += len(VOCABULARY[token].encode())
            if size > max_bytes:
                return "".join(written)
            _accept(matcher, token)
            written.append(VOCABULARY[token])


def _allowed(matcher: xgrammar.GrammarMatcher, bitmask: Any) -> list[int]:
    """The tokens the matcher allows next (`bitmask` is filled with them)."""
    matcher.fill_next_token_bitmask(bitmask)
    bits = np.unpackbits(bitmask.numpy().view(np.uint8), bitorder="little")
    return [int(token) for token in np.flatnonzero(bits[:len(VOCABULARY)])]


def _accept(matcher: xgrammar.GrammarMatcher, token: int) -> None:
    if not matcher.accept_token(token):
        raise AssertionError(f"the matcher refused {VOCABULARY[token]!r} it allowed")


def _after(matcher: xgrammar.GrammarMatcher, token: int) -> xgrammar.GrammarMatcher:
    ahead = matcher.fork()
    ahead.accept_token(token)
    return ahead
