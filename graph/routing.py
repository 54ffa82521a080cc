"""Where the graph goes after describing, checking and measuring: plain functions of the state."""

from __future__ import annotations

from typing import Literal

from langgraph.runtime import Runtime

from img2music.graph.context import Context
from img2music.graph.state import State


def after_describe(state: State, runtime: Runtime[Context]) -> Literal["retrieve", "compose"]:
    """Retrieval runs only when examples are wanted, so a run without RAG never visits it."""
    context = runtime.context
    return "retrieve" if context.rag and context.rag_k > 0 else "compose"


def after_parse_check(
    state: State, runtime: Runtime[Context]
) -> Literal["evaluate", "compose", "explain"]:
    """A valid tune is measured; a broken one goes back for repair while attempts are left;
    then the run ends on the best valid tune it has, or fails naming the last errors."""
    attempts = state["attempts"]
    last = attempts[-1]
    if last["valid"]:
        return "evaluate"
    repairs_this_round = sum(
        1 for attempt in attempts if attempt["round"] == last["round"] and not attempt["valid"]
    )
    if repairs_this_round <= runtime.context.repairs:
        return "compose"
    return "explain"


def after_evaluate(state: State, runtime: Runtime[Context]) -> Literal["compose", "explain"]:
    """Refine while rounds are left; the refined tune replaces the current one only if valid."""
    context = runtime.context
    if context.refine and state["attempts"][-1]["round"] < context.refine_rounds:
        return "compose"
    return "explain"
