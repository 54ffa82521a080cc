"""`langgraph dev` serves the graph to LangGraph Studio and the OpenAI routes on one port."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from img2music.tools.abc.check import check_abc
from tests.needs import LANGGRAPH, needs_langgraph_cli
from tests.openai_server import Behaviour, ScriptedServer, scripted_server
from tests.serving import listening_port, within
from tests.test_graph import reply_for
from tests.test_server import PHOTO_URL, image_message

ROOT = Path(__file__).resolve().parents[1]


def hermetic_config(folder: Path) -> Path:
    """The shipped langgraph.json with its file paths made absolute and no `.env`: `langgraph
    dev` then runs outside the checkout, where no developer's settings file can reach it.
    Module paths (`img2music.graph.graph:graph`) are imported as they are."""
    config = json.loads((ROOT / "langgraph.json").read_text(encoding="utf-8"))
    config["dependencies"] = [str(ROOT / path) for path in config["dependencies"]]
    config["graphs"] = {name: _absolute(spec) for name, spec in config["graphs"].items()}
    config["http"] = {**config["http"], "app": _absolute(config["http"]["app"])}
    if "auth" in config:
        config["auth"] = {**config["auth"], "path": _absolute(config["auth"]["path"])}
    config["env"] = {}
    path = folder / "langgraph.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def _absolute(spec: str) -> str:
    """A `file.py:name` spec made absolute; a `module:name` spec as it is."""
    return str(ROOT / spec) if "/" in spec.partition(":")[0] else spec


@contextmanager
def langgraph_dev(folder: Path, vlm: ScriptedServer, **settings: str) -> Iterator[str]:
    """`langgraph dev` on the port the system gives it, with this repository's langgraph.json
    (made hermetic) and the VLM behind it scripted; `settings` are IMG2MUSIC_* values. Yields
    its base URL."""
    environment = {
        **os.environ, "LANGGRAPH_CLI_NO_ANALYTICS": "1", "LANGSMITH_TRACING": "false",
        "IMG2MUSIC_DATA_DIR": str(folder / "data"), "IMG2MUSIC_VLM_BASE_URL": vlm.url,
        "IMG2MUSIC_VLM_MODEL": vlm.model, "IMG2MUSIC_CLIP_MODEL": "img2music-tiny",
        "IMG2MUSIC_CLIP_PRETRAINED": "none", "IMG2MUSIC_EXPLAIN": "none",
        **{f"IMG2MUSIC_{name.upper()}": value for name, value in settings.items()},
    }
    log_path = folder / "langgraph-dev.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [str(LANGGRAPH), "dev", "--no-browser", "--no-reload", "--host", "127.0.0.1",
             "--port", "0", "--config", str(hermetic_config(folder))], cwd=folder,
            env=environment, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{listening_port(process)}"
            deadline = time.monotonic() + 120
            while True:  # listening comes before the graph is loaded
                try:
                    if httpx.get(f"{url}/ok", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("langgraph dev did not start: "
                                       + log_path.read_text()[-2000:])
                time.sleep(0.5)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ScriptedServer]]:
    """One `langgraph dev` for the module, on the port the system gave it, and its VLM."""
    folder = tmp_path_factory.mktemp("studio")
    with scripted_server(reply_for) as vlm, langgraph_dev(folder, vlm) as url:
        yield url, vlm


@pytest.fixture
def dev_server(dev: tuple[str, ScriptedServer]) -> str:
    return dev[0]


def langgraph_runs_of(studio: httpx.Client, run_id: str) -> tuple[str, list[dict[str, Any]]]:
    """The LangGraph thread the app's run `run_id` became, and the runs LangGraph lists on it."""
    [thread] = studio.post("/threads/search",
                           json={"metadata": {"img2music_run_id": run_id}}).json()
    runs: list[dict[str, Any]] = studio.get(f"/threads/{thread['thread_id']}/runs").json()
    return thread["thread_id"], runs


def assistant_of(studio: httpx.Client, graph_id: str) -> str:
    assistants = studio.post("/assistants/search", json={"graph_id": graph_id}).json()
    found: str = assistants[0]["assistant_id"]
    return found


@needs_langgraph_cli
def test_studio_sees_the_graph_its_settings_and_prompts_and_runs_it(dev_server: str) -> None:
    with httpx.Client(base_url=dev_server, timeout=120) as studio:
        assistants = studio.post("/assistants/search", json={}).json()
        [assistant] = [a for a in assistants if a["graph_id"] == "img2music"]
        schemas = studio.get(f"/assistants/{assistant['assistant_id']}/schemas").json()
        fields = schemas["context_schema"]["properties"]
        assert set(schemas["input_schema"]["properties"]) == {"image", "note"}
        assert set(schemas["output_schema"]["properties"]) == {
            "final_abc", "faults", "fault_count", "controls", "motivation", "explanation",
            "status", "failure"}
        assert {"rag_k", "refine_rounds", "max_repairs", "explain",
                "vlm_temperature"} <= set(fields)
        assert fields["key"]["group"] == "music" and "D minor" in fields["key"]["description"]
        assert "examples to retrieve" in fields["rag_k"]["description"].lower()
        assert fields["compose_prompt"]["langgraph_type"] == "prompt"
        assert fields["compose_prompt"]["langgraph_nodes"] == ["compose"]
        graph = studio.get(f"/assistants/{assistant['assistant_id']}/graph").json()
        assert {"describe", "retrieve", "compose", "parse_check", "evaluate", "explain",
                "finish"} <= {
            node["id"] for node in graph["nodes"]}
        final = studio.post("/runs/wait", json={
            "assistant_id": "img2music",
            "input": {"image": PHOTO_URL, "note": "something solemn"},
            "context": {"rag": False, "refine_rounds": 0}}).json()
    assert final["status"] == "done", final.get("failure")
    assert check_abc(final["final_abc"]).ok


@needs_langgraph_cli
def test_studio_composes_several_takes_with_the_takes_graph(
    dev: tuple[str, ScriptedServer],
) -> None:
    url, vlm = dev
    before = len(vlm.requests)
    with httpx.Client(base_url=url, timeout=120) as studio:
        assistant = assistant_of(studio, "img2music_takes")
        schemas = studio.get(f"/assistants/{assistant}/schemas").json()
        assert set(schemas["input_schema"]["properties"]) == {"image", "note", "takes"}
        assert set(schemas["output_schema"]["properties"]) == {"description", "candidates"}
        assert {"seed", "rag_k", "key", "compose_prompt"} <= set(
            schemas["context_schema"]["properties"])
        graph = studio.get(f"/assistants/{assistant}/graph").json()
        assert {"describe", "retrieve", "take"} <= {node["id"] for node in graph["nodes"]}
        inside = studio.get(f"/assistants/{assistant}/graph", params={"xray": "true"}).json()
        assert {"take:compose", "take:parse_check", "take:evaluate", "take:explain"} <= {
            node["id"] for node in inside["nodes"]}  # Studio opens a take's loop
        final = studio.post("/runs/wait", json={
            "assistant_id": "img2music_takes",
            "input": {"image": PHOTO_URL, "note": "something solemn", "takes": 2},
            "context": {"rag": False, "refine_rounds": 0, "seed": 7}}).json()
    takes = final["candidates"]
    assert [take["take"] for take in takes] == [1, 2], final
    assert all(take["status"] == "done" and check_abc(take["final_abc"]).ok for take in takes)
    assert takes[0]["seed"] == 7 and takes[1]["seed"] != 7
    asked = vlm.requests[before:]
    assert sum("Describe this image" in str(body) for body in asked) == 1 and len(asked) == 3
    assert len({body["seed"] for body in asked}) == 3


@needs_langgraph_cli
def test_the_openai_routes_and_the_page_answer_on_the_same_port(dev_server: str) -> None:
    page = httpx.get(f"{dev_server}/")
    assert page.status_code == 200 and "<title>" in page.text
    assert httpx.get(f"{dev_server}/page/page.js").status_code == 200
    client = openai.OpenAI(base_url=f"{dev_server}/v1", api_key="none", max_retries=0)
    assert [model.id for model in client.models.list()] == ["img2music"]
    completion = client.chat.completions.create(
        model="img2music", messages=image_message(),
        extra_body={"img2music": {"rag": False, "refine": False}})
    assert "```abc" in (completion.choices[0].message.content or "")
    # Without a key, a page that points its own host name here (DNS rebinding) is refused, on
    # LangGraph's routes as on the app's: the app's Host check runs for the whole server.
    foreign = {"Host": "rebound.example"}
    assert httpx.post(f"{dev_server}/assistants/search", json={},
                      headers=foreign).status_code == 400
    assert httpx.get(f"{dev_server}/v1/models", headers=foreign).status_code == 400


@needs_langgraph_cli
def test_a_run_through_the_openai_route_is_run_and_listed_by_langgraphs_runs_api(
    dev_server: str,
) -> None:
    client = openai.OpenAI(base_url=f"{dev_server}/v1", api_key="none", max_retries=0)
    completion = client.chat.completions.create(
        model="img2music", messages=image_message(),
        extra_body={"img2music": {"rag": False, "refine": False}})
    extension: dict[str, Any] = completion.model_extra["img2music"]  # type: ignore[index]
    with httpx.Client(base_url=dev_server, timeout=30) as studio:
        thread_id, runs = langgraph_runs_of(studio, extension["run_id"])
        assert [(run["status"], run["assistant_id"]) for run in runs] == [
            ("success", assistant_of(studio, "img2music"))]
        state = studio.get(f"/threads/{thread_id}/state").json()
        history = studio.post(f"/threads/{thread_id}/history", json={"limit": 50}).json()
    # The run's state and checkpoints are LangGraph's; its folder and files are still the app's.
    assert state["values"]["final_abc"] == extension["abc"]
    assert check_abc(extension["abc"]).ok
    assert len(history) > 4  # a checkpoint per step: Studio can step through the run
    assert httpx.get(extension["files"]["tune.abc"]).text.strip() == extension["abc"].strip()


@needs_langgraph_cli
def test_a_delete_cancels_the_langgraph_run_and_closes_its_model_request(
    dev: tuple[str, ScriptedServer],
) -> None:
    url, vlm = dev
    vlm.behaviour = Behaviour(sleep_s=30)
    try:
        before, hung_up = len(vlm.requests), list(vlm.hung_up)
        with httpx.Client(base_url=url, timeout=120) as http, http.stream(
                "POST", "/v1/chat/completions",
                json={"model": "img2music", "stream": True, "messages": image_message()},
        ) as response:
            lines = response.iter_lines()
            run_id = json.loads(next(lines).removeprefix("data: "))["img2music"]["run_id"]
            within(60, "the first model call in flight", lambda: vlm.in_flight == 1)
            assert http.delete(f"/v1/runs/{run_id}").status_code == 200
            within(2, "the model server saw its request closed",
                   lambda: vlm.hung_up == [*hung_up, before + 1])
            http.get(f"/v1/runs/{run_id}/events", timeout=2).raise_for_status()  # it ended
            summary = http.get(f"/v1/runs/{run_id}").json()
            _, runs = langgraph_runs_of(http, run_id)
    finally:
        vlm.behaviour = Behaviour()
    assert (summary["status"], summary["failure_kind"]) == ("failed", "cancelled")
    assert [run["status"] for run in runs] == ["interrupted"]


@needs_langgraph_cli
def test_a_model_failure_in_langgraphs_worker_is_the_same_error_on_the_openai_route(
    dev: tuple[str, ScriptedServer],
) -> None:
    url, vlm = dev
    vlm.behaviour = Behaviour(status=400, message="this model takes no images")
    try:
        response = httpx.post(f"{url}/v1/chat/completions", timeout=120,
                              json={"model": "img2music", "messages": image_message()})
    finally:
        vlm.behaviour = Behaviour()
    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert error["code"] == "vlm_unavailable"
    assert "this model takes no images" in error["message"]
