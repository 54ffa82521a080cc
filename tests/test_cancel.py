"""Stopping a run ends its model call: against a model that takes 30 s to answer, a DELETE, a
streaming client that hangs up and the run time limit each end the run within 2 s, and the model
server sees its request closed (so vLLM would stop generating for nobody).

The 2 s are the tests' own wait limits (an HTTP timeout, a deadline to see the state), never a
measured time that is asserted; nothing sleeps to order work. The page's Cancel is tested in a
real browser in tests/test_page.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.openai_server import Behaviour
from tests.serving import within
from tests.test_server import Served, image_message, img2music_server

MODEL_ANSWERS_AFTER_S = 30.0
ENDS_WITHIN_S = 2.0


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The app against a model that takes 30 s over every answer."""
    with img2music_server(tmp_path_factory.mktemp("slow"),
                          behaviour=Behaviour(sleep_s=MODEL_ANSWERS_AFTER_S)) as server:
        yield server


def started_run(lines: Iterator[str], server: Served) -> str:
    """The run a streamed request started, once its first model call is in flight; `lines`
    are the stream's, kept by the caller (a dropped iterator closes the response)."""
    first = json.loads(next(lines).removeprefix("data: "))
    run_id: str = first["img2music"]["run_id"]
    within(60, "the first model call in flight", lambda: server.vlm.in_flight == 1)
    return run_id


def ended(server: Served, run_id: str) -> dict[str, Any]:
    """The run's summary, read once its event stream has ended (within the 2 s)."""
    run = f"{server.url}/v1/runs/{run_id}"
    httpx.get(f"{run}/events", timeout=ENDS_WITHIN_S).raise_for_status()
    summary: dict[str, Any] = httpx.get(run, timeout=ENDS_WITHIN_S).json()
    return summary


def stream_body() -> dict[str, Any]:
    return {"model": "img2music", "stream": True, "messages": image_message()}


def test_a_delete_ends_the_run_and_closes_its_model_request(slow: Served) -> None:
    before = len(slow.vlm.requests)
    with httpx.Client(base_url=slow.url, timeout=120) as http, \
            http.stream("POST", "/v1/chat/completions", json=stream_body()) as response:
        lines = response.iter_lines()
        run_id = started_run(lines, slow)
        assert http.delete(f"/v1/runs/{run_id}").json()["status"] == "cancelling"
        summary = ended(slow, run_id)
        within(ENDS_WITHIN_S, "the model server saw its request closed",
               lambda: slow.vlm.hung_up == [before + 1])
        rest = "\n".join(lines)
    assert (summary["status"], summary["failure_kind"]) == ("failed", "cancelled")
    assert "cancelled by request" in rest and rest.rstrip().endswith("data: [DONE]")
    assert len(slow.vlm.requests) == before + 1


def test_a_streaming_client_that_hangs_up_ends_its_run(slow: Served) -> None:
    before = len(slow.vlm.requests)
    hung_up = list(slow.vlm.hung_up)
    with httpx.Client(base_url=slow.url, timeout=120) as http:
        with http.stream("POST", "/v1/chat/completions", json=stream_body()) as response:
            run_id = started_run(response.iter_lines(), slow)
        summary = ended(slow, run_id)  # the client's connection is closed by now
    within(ENDS_WITHIN_S, "the model server saw its request closed",
           lambda: slow.vlm.hung_up == [*hung_up, before + 1])
    assert (summary["status"], summary["failure_kind"]) == ("failed", "cancelled")
    assert len(slow.vlm.requests) == before + 1


def test_a_run_past_its_time_limit_ends_and_closes_its_model_request(tmp_path: Path) -> None:
    limit_s = 1.0
    with img2music_server(tmp_path, behaviour=Behaviour(sleep_s=MODEL_ANSWERS_AFTER_S),
                          server_run_timeout_s=limit_s) as server:
        response = httpx.post(f"{server.url}/v1/chat/completions", timeout=limit_s + 2,
                              json={"model": "img2music", "messages": image_message()})
        within(ENDS_WITHIN_S, "the model server saw its request closed",
               lambda: server.vlm.hung_up == [1])
    assert response.status_code == 504, response.text
    error = response.json()["error"]
    assert error["code"] == "timeout" and "1 s (the server's run time limit)" in error["message"]
    assert len(server.vlm.requests) == 1
