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
    default_retriever,
    describe,
    evaluate,
    explain,
    finish,
    parse_check,
    retrieve,
)
from img2music.graph.routing import after_describe, after_evaluate, after_parse_check
from img2music.graph.state import Input, Output, State
from img2music.settings import Settings, get_settings

GRAPH_NAME = "img2music"


def build_graph(
    *,
    settings: Settings | None = None,
    model_for: ModelFor | None = None,
    retriever_for: RetrieverFor | None = None,
    checkpointer: Checkpointer = None,
) -> CompiledStateGraph[State, Context, Input, Output]:
    """The composing graph; pass a checkpointer (SQLite) for runs that survive interruption.

    What a run may choose is its context; what only the operator chooses comes from `settings`
    (the process's when not given) and is bound into the nodes here, once: how the model is
    reached (backend, key, profile, timeouts: `model_for`), the index (`retriever_for`), and
    the explainer's CLIP and attention models. No node reads the process's settings itself.
    """
    settings = settings or get_settings()
    model_for = model_for or partial(chat_model, settings=settings)
    builder = StateGraph(State, context_schema=Context, input_schema=Input,
                         output_schema=Output)
    builder.add_node("describe", partial(describe, model_for=model_for))
    builder.add_node("retrieve", partial(
        retrieve, retriever_for=retriever_for or partial(default_retriever, settings=settings)))
    builder.add_node("compose", partial(compose, model_for=model_for,
                                        backend=settings.vlm_backend))
    builder.add_node("parse_check", parse_check)
    builder.add_node("evaluate", evaluate)
    builder.add_node("explain", partial(explain, model_for=model_for, settings=settings))
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
