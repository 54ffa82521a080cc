"""`langgraph dev` serves the graph to LangGraph Studio and the OpenAI routes on one port."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest

from img2music.tools.check import check_abc
from tests.openai_server import ScriptedServer, scripted_server
from tests.test_graph import reply_for
from tests.test_server import PHOTO_URL, image_message

ROOT = Path(__file__).resolve().parents[1]
LANGGRAPH = Path(sys.executable).with_name("langgraph")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def langgraph_dev(tmp_path: Path, vlm: ScriptedServer, **settings: str) -> Iterator[str]:
    """`langgraph dev` on a free loopback port with this repository's langgraph.json, the VLM
    behind it scripted; `settings` are IMG2MUSIC_* values. Yields its base URL."""
    if not LANGGRAPH.exists() and shutil.which("langgraph") is None:
        pytest.skip("langgraph-cli[inmem] is not installed (pip install -e '.[dev]')")
    port = free_port()
    environment = {
        **os.environ, "LANGGRAPH_CLI_NO_ANALYTICS": "1", "LANGSMITH_TRACING": "false",
        "IMG2MUSIC_DATA_DIR": str(tmp_path / "data"), "IMG2MUSIC_VLM_BASE_URL": vlm.url,
        "IMG2MUSIC_VLM_MODEL": vlm.model, "IMG2MUSIC_CLIP_MODEL": "img2music-tiny",
        "IMG2MUSIC_CLIP_PRETRAINED": "none", "IMG2MUSIC_EXPLAIN": "none",
        **{f"IMG2MUSIC_{name.upper()}": value for name, value in settings.items()},
    }
    log_path = tmp_path / "langgraph-dev.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [str(LANGGRAPH), "dev", "--no-browser", "--no-reload", "--host", "127.0.0.1",
             "--port", str(port)], cwd=ROOT, env=environment, stdout=log,
            stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
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


@pytest.fixture
def dev_server(tmp_path: Path) -> Iterator[str]:
    with scripted_server(reply_for) as vlm, langgraph_dev(tmp_path, vlm) as url:
        yield url


def test_studio_sees_the_graph_its_settings_and_prompts_and_runs_it(dev_server: str) -> None:
    with httpx.Client(base_url=dev_server, timeout=120) as studio:
        assistants = studio.post("/assistants/search", json={}).json()
        [assistant] = [a for a in assistants if a["graph_id"] == "img2music"]
        schemas = studio.get(f"/assistants/{assistant['assistant_id']}/schemas").json()
        fields = schemas["context_schema"]["properties"]
        assert {"rag_k", "refine_rounds", "repairs", "explain", "temperature"} <= set(fields)
        assert "examples to retrieve" in fields["rag_k"]["description"].lower()
        assert fields["compose_prompt"]["langgraph_type"] == "prompt"
        assert fields["compose_prompt"]["langgraph_nodes"] == ["compose"]
        graph = studio.get(f"/assistants/{assistant['assistant_id']}/graph").json()
        assert {"describe", "retrieve", "compose", "parse_check", "evaluate", "explain"} <= {
            node["id"] for node in graph["nodes"]}
        final = studio.post("/runs/wait", json={
            "assistant_id": "img2music",
            "input": {"image": PHOTO_URL, "note": "something solemn"},
            "context": {"rag": False, "refine_rounds": 0}}).json()
    assert final["status"] == "done", final.get("failure")
    assert check_abc(final["final_abc"]).ok


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
