"""Runs through a LangGraph server's own runs API, when the app is mounted into one.

Under `langgraph dev` or a LangGraph deployment (`langgraph.json`'s `http.app`), the graph
already has an engine: the server's queue, its workers and its checkpointer, which Studio
shows. There a run accepted on `/v1/chat/completions` or from the page becomes a thread and a
run of the `img2music` assistant, made through the SDK's in-process client (`get_client()`
without a URL: an ASGI transport into the server's own app, no network, no auth round trip),
so Studio lists it with its thread, the server's queue orders it and its checkpoints are the
server's. The app still gives the run its folder, its live feed and its files from the final
state. `img2music serve`, which has no LangGraph server, drives the graph in its own process
(`pipeline.runs.in_process`).

A run that is stopped (a DELETE, the page's Cancel, a streaming client that went away, the
run time limit) cancels its LangGraph run: the server's worker cancels the graph's task, which
closes the model request in flight.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

from langgraph_sdk import get_client
from langgraph_sdk.client import LangGraphClient

from img2music.graph.context import Context
from img2music.graph.graph import GRAPH_NAME
from img2music.graph.models import VLMUnavailable
from img2music.graph.state import Input
from img2music.pipeline.runs import Drive, FailureKind, GraphFailed

logger = logging.getLogger(__name__)

# In-process requests never cross a network, but they pass the app's Host check (which the
# server applies to its own routes too): they name a loopback host, as a local client would.
IN_PROCESS_HEADERS = {"host": "localhost"}
# The graph's exceptions that end a run with a kind of their own, by their names as LangGraph's
# error events carry them; any other is the server's fault.
FAILURE_KINDS: dict[str, FailureKind] = {"VLMUnavailable": "vlm_unavailable",
                                         "TemplateRefused": "bad_prompt",
                                         "RunOverrideRefused": "bad_prompt"}


def under_langgraph_server() -> bool:
    """Whether this process is a LangGraph API server that mounted this app and serves the
    graph: `langgraph dev` and LangGraph's images set both from `langgraph.json`."""
    graphs = os.environ.get("LANGSERVE_GRAPHS") or "{}"
    try:
        served = json.loads(graphs)
    except json.JSONDecodeError:
        return False
    return bool(os.environ.get("LANGGRAPH_HTTP")) and GRAPH_NAME in served


def drive_for(run_id: str) -> Drive:
    """The runs-API drive of one of the app's runs; its thread carries the run's id, so the
    thread Studio shows and the run's folder find each other."""

    async def drive(state: Input, context: Context) -> AsyncIterator[tuple[str, Any]]:
        client = get_client(headers=IN_PROCESS_HEADERS)
        thread = await client.threads.create(
            metadata={"img2music_run_id": run_id, "source": "openai-route"},
            graph_id=GRAPH_NAME)
        thread_id = str(thread["thread_id"])
        run_ids: list[str] = []
        try:
            async for part in client.runs.stream(
                    thread_id, GRAPH_NAME, input=state, context=asdict(context),
                    stream_mode="updates", on_disconnect="cancel",
                    metadata={"img2music_run_id": run_id},
                    on_run_created=lambda created: run_ids.append(str(created["run_id"]))):
                if part.event == "updates":
                    yield "updates", part.data
                elif part.event == "error":
                    raise _failure(part.data)
        except asyncio.CancelledError:
            await asyncio.shield(_cancel(client, thread_id, run_ids))
            raise
        final = await client.threads.get_state(thread_id)
        yield "values", final["values"]

    return drive


def _failure(error: Any) -> Exception:
    """A run's error event as the exception `acompose` names a failure by."""
    name = str(error.get("error", "")) if isinstance(error, dict) else ""
    message = str(error.get("message", "")) if isinstance(error, dict) else str(error)
    if name == "VLMUnavailable":
        return VLMUnavailable(message)
    return GraphFailed(f"{name}: {message}" if name else message,
                       FAILURE_KINDS.get(name, "internal"))


async def _cancel(client: LangGraphClient, thread_id: str, run_ids: list[str]) -> None:
    """Cancel the LangGraph run (its worker cancels the graph's task and so closes the model
    request); a run that had not been created yet has nothing to cancel."""
    for created in run_ids:
        try:
            await client.runs.cancel(thread_id, created, action="interrupt")
        except Exception as error:  # the run ended meanwhile; nothing is left to stop
            logger.info("LangGraph run %s not cancelled: %s", created, error)
