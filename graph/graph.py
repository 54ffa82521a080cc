"""describe → (retrieve) → compose → parse_check ⟲ (repair) → evaluate ⟲ (refine) → explain;
a run with nothing playable ends in finish. In: the image and a note; out: the tune and why.

`takes_graph` (Studio's `img2music_takes`) is describe → (retrieve) → take ×N, each take that
compose loop under its own seed; in: the image, a note and how many takes; out: every take."""

from __future__ import annotations

from functools import partial
from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from langgraph.types import Checkpointer

from img2music.graph.context import Context
from img2music.graph.models import chat_model
from img2music.graph.nodes import (
    ComposeLoop,
    ModelFor,
    RetrieverFor,
    compose,
    compose_take,
    default_retriever,
    describe,
    evaluate,
    explain,
    finish,
    parse_check,
    retrieve,
)
from img2music.graph.routing import (
    after_describe,
    after_evaluate,
    after_parse_check,
    before_describe,
    one_take_each,
    takes_after_describe,
)
from img2music.graph.state import (
    Input,
    Output,
    State,
    TakesInput,
    TakesOutput,
    TakesState,
    TakeState,
)
from img2music.settings import Settings, get_settings

GRAPH_NAME = "img2music"
TAKES_GRAPH_NAME = "img2music_takes"


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
    nodes = bound_nodes(settings, model_for, retriever_for)
    builder = StateGraph(State, context_schema=Context, input_schema=Input,
                         output_schema=Output)
    builder.add_node("describe", nodes["describe"])
    builder.add_node("retrieve", nodes["retrieve"])
    add_compose_loop(builder, nodes)

    builder.add_edge(START, "describe")
    builder.add_conditional_edges("describe", after_describe)
    builder.add_edge("retrieve", "compose")
    return builder.compile(checkpointer=checkpointer, name=GRAPH_NAME)


def add_compose_loop(builder: StateGraph[Any, Context, Any, Any],
                     nodes: dict[str, Any]) -> None:
    """compose → parse_check ⟲ (repair) → evaluate ⟲ (refine) → explain, or finish: the part of
    the graph that makes one tune from a description (and examples)."""
    for name in ("compose", "parse_check", "evaluate", "explain", "finish"):
        builder.add_node(name, nodes[name])
    builder.add_edge("compose", "parse_check")
    builder.add_conditional_edges("parse_check", after_parse_check)
    builder.add_conditional_edges("evaluate", after_evaluate)
    builder.add_edge("explain", END)
    builder.add_edge("finish", END)


def build_compose_loop(nodes: dict[str, Any]) -> ComposeLoop:
    """The compose loop on its own, from START: what each take of a run of several runs."""
    builder = StateGraph(State, context_schema=Context)
    add_compose_loop(builder, nodes)
    builder.add_edge(START, "compose")
    return builder.compile(name="compose_loop")


def build_takes_graph(
    *,
    settings: Settings | None = None,
    model_for: ModelFor | None = None,
    retriever_for: RetrieverFor | None = None,
    checkpointer: Checkpointer = None,
) -> CompiledStateGraph[TakesState, Context, TakesInput, TakesOutput]:
    """Several takes in one run (Studio's `img2music_takes`): describe and retrieve once, then
    a `take` per take at once (`Send`), each the compose loop under its own seed
    (`Context.take_seed`: take 1 has the run's seed, so it is the tune the `img2music` graph
    gives with that seed); the output lists every take. The `img2music` graph stays one take,
    with its input (the image and a note) and its diagram as they are."""
    nodes = bound_nodes(settings, model_for, retriever_for)
    builder = StateGraph(TakesState, context_schema=Context, input_schema=TakesInput,
                         output_schema=TakesOutput)
    builder.add_node("describe", nodes["describe"])
    builder.add_node("retrieve", nodes["retrieve"])
    loop = build_compose_loop(nodes)

    async def take(state: TakeState, runtime: Runtime[Context]) -> TakesState:
        """`compose_take` on the compose loop; a closure over it, so LangGraph finds the loop
        as the node's subgraph (Studio's expanded view draws it)."""
        return await compose_take(state, runtime, loop=loop)

    builder.add_node("take", take)

    builder.add_conditional_edges(START, before_describe)
    builder.add_conditional_edges("describe", takes_after_describe, ["retrieve", "take"])
    builder.add_conditional_edges("retrieve", one_take_each, ["take"])
    builder.add_edge("take", END)
    return builder.compile(checkpointer=checkpointer, name=TAKES_GRAPH_NAME)


def bound_nodes(settings: Settings | None, model_for: ModelFor | None,
                retriever_for: RetrieverFor | None) -> dict[str, Any]:
    """Each node by its name, with the operator's side bound in (see `build_graph`)."""
    settings = settings or get_settings()
    model_for = model_for or partial(chat_model, settings=settings)
    return {
        "describe": partial(describe, model_for=model_for),
        "retrieve": partial(retrieve, retriever_for=retriever_for or partial(
            default_retriever, settings=settings)),
        "compose": partial(compose, model_for=model_for, backend=settings.vlm_backend),
        "parse_check": parse_check,
        "evaluate": evaluate,
        "explain": partial(explain, model_for=model_for, settings=settings),
        "finish": finish,
    }


graph = build_graph()
takes_graph = build_takes_graph()
