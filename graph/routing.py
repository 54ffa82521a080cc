"""Where the graph goes after describing, checking and measuring: plain functions of the state."""

from __future__ import annotations

from typing import Literal

from langgraph.runtime import Runtime

from img2music.graph.context import Context
from img2music.graph.state import State, is_clean, repeats_an_earlier_tune


def after_describe(state: State, runtime: Runtime[Context]) -> Literal["retrieve", "compose"]:
    """Retrieval runs only when examples are wanted, so a run without RAG never visits it."""
    context = runtime.context
    return "retrieve" if context.rag and context.rag_k > 0 else "compose"


def after_parse_check(
    state: State, runtime: Runtime[Context]
) -> Literal["evaluate", "compose", "explain", "finish"]:
    """A tune with errors or faults goes back for repair while repairs are left in this round,
    unless the model handed back a tune it already wrote. Then the tune the run stands on is
    measured if it is new this round; otherwise the run ends: on its best playable tune
    (explained), or with nothing playable (finished, with the last errors)."""
    attempts = state["attempts"]
    last = attempts[-1]
    repairs_this_round = sum(
        attempt["round"] == last["round"] and attempt["kind"] == "repair" for attempt in attempts
    )
    if (not is_clean(last) and not repeats_an_earlier_tune(attempts)
            and repairs_this_round < runtime.context.max_repairs):
        return "compose"
    best = state.get("best")
    if best is None:
        return "finish"
    return "evaluate" if attempts[best]["metrics"] is None else "explain"


def after_evaluate(state: State, runtime: Runtime[Context]) -> Literal["compose", "explain"]:
    """Refine while rounds are left; a refined tune replaces the current one only when it is
    playable and has no more faults (`state.replaces`)."""
    context = runtime.context
    if context.refine and state["attempts"][-1]["round"] < context.refine_rounds:
        return "compose"
    return "explain"
