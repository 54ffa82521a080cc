"""Where the graphs go after describing, checking and measuring, and how a run of several takes
fans out: plain functions of the state."""

from __future__ import annotations

from typing import Literal

from langgraph.runtime import Runtime
from langgraph.types import Send

from img2music.graph.context import Context
from img2music.graph.state import (
    State,
    TakesInput,
    TakesState,
    TakeState,
    check_takes,
    is_clean,
    repeats_an_earlier_tune,
    shared_by_takes,
)


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


def before_describe(state: TakesInput) -> Literal["describe"]:
    """A run of several takes describes first; a count of takes out of range ends it here,
    before the model is paid for a description."""
    check_takes(state.get("takes", 1))
    return "describe"


def takes_after_describe(
    state: TakesState, runtime: Runtime[Context]
) -> Literal["retrieve"] | list[Send]:
    """Retrieval, when the run wants examples, as in a run of one take; else the takes at once."""
    return "retrieve" if after_describe(state, runtime) == "retrieve" else one_take_each(state)


def one_take_each(state: TakesState) -> list[Send]:
    """A `take` for each take asked for, all at once, each from what the takes share."""
    shared = shared_by_takes(state)
    return [Send("take", TakeState(**shared, take=number))
            for number in range(state.get("takes", 1))]
