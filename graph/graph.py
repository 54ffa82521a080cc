"""describe → (retrieve) → compose → parse_check ⟲ (repair) → evaluate ⟲ (refine) → explain;
a run with nothing playable ends in finish. In: the image and a note; out: the tune and why."""

from __future__ import annotations

from functools import partial

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Checkpointer

from img2music.graph.context import Context
from img2music.graph.models import chat_model
from img2music.graph.nodes import (
    ModelFor,
    RetrieverFor,
    compose,
    describe,
    evaluate,
    explain,
    finish,
    parse_check,
    retrieve,
)
from img2music.graph.routing import after_describe, after_evaluate, after_parse_check
from img2music.graph.state import Input, Output, State

GRAPH_NAME = "img2music"


def build_graph(
    *,
    model_for: ModelFor = chat_model,
    retriever_for: RetrieverFor | None = None,
    checkpointer: Checkpointer = None,
) -> CompiledStateGraph[State, Context, Input, Output]:
    """The composing graph; pass a checkpointer (SQLite) for runs that survive interruption."""
    builder = StateGraph(State, context_schema=Context, input_schema=Input,
                         output_schema=Output)
    builder.add_node("describe", partial(describe, model_for=model_for))
    builder.add_node("retrieve", partial(retrieve, retriever_for=retriever_for))
    builder.add_node("compose", partial(compose, model_for=model_for))
    builder.add_node("parse_check", parse_check)
    builder.add_node("evaluate", evaluate)
    builder.add_node("explain", partial(explain, model_for=model_for))
    builder.add_node("finish", finish)

    builder.add_edge(START, "describe")
    builder.add_conditional_edges("describe", after_describe)
    builder.add_edge("retrieve", "compose")
    builder.add_edge("compose", "parse_check")
    builder.add_conditional_edges("parse_check", after_parse_check)
    builder.add_conditional_edges("evaluate", after_evaluate)
    builder.add_edge("explain", END)
    builder.add_edge("finish", END)
    return builder.compile(checkpointer=checkpointer, name=GRAPH_NAME)


graph = build_graph()
