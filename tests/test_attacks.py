"""Each attack the security review made on img2music, run against the real code path: each one
must fail with a clear line and leave nothing on disk and nothing in any answer.

Only public entry points are used (the server's HTTP routes, `langgraph dev`, `compose`, the
CLI, `compile_abc`), so the same file shows each attack working against an older checkout.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser

from img2music.pipeline.runs import compose
from img2music.settings import Settings
from img2music.tools.abc.check import compile_abc
from tests.needs import needs_chromium, needs_langgraph_cli, needs_programs
from tests.openai_server import ScriptedServer, last_user_text, scripted_server
from tests.scripted import ScriptedChatModel
from tests.test_compose_cli import PHOTO
from tests.test_graph import DESCRIPTION, TUNE, Examples, answer, reply_for
from tests.test_page import browser  # noqa: F401 - the shared headless chromium
from tests.test_server import KEY, PHOTO_URL, Gate, image_message, img2music_server, post
from tests.test_studio import langgraph_dev

VLM_KEY = "sk-vlm-never-to-be-seen"


# --- 1. LangGraph's API: code through an edited prompt, the key sent elsewhere, open routes. ---

@dataclass
class Studio:
    url: str
    vlm: ScriptedServer  # the operator's model
    elsewhere: ScriptedServer  # a host a run should never reach
    folder: Path

    def run(self, context: dict[str, Any], key: str | None = KEY) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        response = httpx.post(f"{self.url}/runs/wait", headers=headers, timeout=300, json={
            "assistant_id": "img2music", "input": {"image": PHOTO_URL, "note": "solemn"},
            "context": {"rag": False, "refine": False, **context}})
        return {"status_code": response.status_code, "body": response.json()}


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Studio]:
    folder = tmp_path_factory.mktemp("studio")
    with scripted_server(reply_for) as vlm, scripted_server(reply_for) as elsewhere, \
            langgraph_dev(folder, vlm, api_key=KEY, vlm_api_key=VLM_KEY) as url:
        yield Studio(url=url, vlm=vlm, elsewhere=elsewhere, folder=folder)


@needs_langgraph_cli
def test_a_prompt_edited_for_a_run_cannot_run_code(studio: Studio) -> None:
    marker = studio.folder / "owned"
    attack = ("{{ cycler.__init__.__globals__.os.popen('touch " + str(marker) + "').read() }}")
    calls = len(studio.vlm.requests)
    result = studio.run({"compose_prompt": attack})
    assert not marker.exists()
    said = json.dumps(result["body"])
    assert "compose_prompt" in said and "unsafe" in said, said
    assert len(studio.vlm.requests) == calls  # refused before the first model call


@needs_langgraph_cli
def test_a_prompt_edited_for_a_run_still_reaches_the_model_rendered(studio: Studio) -> None:
    calls = len(studio.vlm.requests)
    result = studio.run({"compose_prompt": "Music for this: {{ description }} Mood: {{ note }}. "
                                           "Answer in an ```abc block. {{ thinking }}"})
    assert result["body"]["status"] == "done", result
    compose_call = last_user_text(studio.vlm.requests[calls + 1])
    assert "Music for this: A formal portrait of an officer" in compose_call
    assert "Mood: solemn." in compose_call and "{{" not in compose_call


@needs_langgraph_cli
def test_a_run_cannot_send_the_model_key_to_another_host(studio: Studio) -> None:
    moved = studio.run({"vlm_base_url": studio.elsewhere.url})
    assert [headers.get("authorization") for headers in studio.elsewhere.headers] == []
    assert studio.elsewhere.requests == []
    elsewhere = studio.run({"prompts_dir": str(studio.folder)})
    for field, result in (("vlm_base_url", moved), ("prompts_dir", elsewhere)):
        assert field in json.dumps(result["body"])
        assert result["body"].get("status") != "done"


@needs_langgraph_cli
def test_langgraphs_routes_need_the_key_even_from_studio(studio: Studio) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"x-auth-scheme": "langsmith"}):
        response = httpx.post(f"{studio.url}/assistants/search", json={}, headers=headers)
        assert response.status_code in (401, 403), (headers, response.text)
    calls = len(studio.vlm.requests)
    assert studio.run({}, key=None)["status_code"] in (401, 403)
    assert len(studio.vlm.requests) == calls
    allowed = httpx.post(f"{studio.url}/assistants/search", json={},
                         headers={"Authorization": f"Bearer {KEY}"})
    assert allowed.status_code == 200


@needs_langgraph_cli
def test_only_studio_may_call_from_a_browser(studio: Studio) -> None:
    def preflight(origin: str) -> httpx.Response:
        return httpx.options(f"{studio.url}/runs/wait", headers={
            "Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type"})

    assert "access-control-allow-origin" not in preflight("https://evil.example").headers
    studio_answer = preflight("https://smith.langchain.com")
    assert studio_answer.headers["access-control-allow-origin"] == "https://smith.langchain.com"


# --- 2. A tune that reads a local file. ---------------------------------------------------------

SECRET = "root:x:0:0:SECRET-7f3a"


def test_a_tune_cannot_read_a_local_file(tmp_path: Path) -> None:
    secret = tmp_path / "passwd"
    secret.write_text(SECRET + "\nT:SECRET-7f3a title\n", encoding="utf-8")
    tune = TUNE.replace("M:4/4\n", f"M:4/4\n%%abc-include {secret}\n")

    def include(body: dict[str, Any]) -> str:
        text = last_user_text(body)
        return DESCRIPTION if "Describe this image" in text else answer(tune)

    with img2music_server(tmp_path, responder=include, max_repairs=1) as server:
        stream = server.client.chat.completions.create(
            model="img2music", messages=image_message(), stream=True,
            extra_body={"img2music": {"refine": False}})
        chunks = [chunk.model_dump_json() for chunk in stream]
        run_id = json.loads(chunks[0])["img2music"]["run_id"]
        folder = server.runs / run_id
        written = {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}
        prompts = json.dumps(server.vlm.requests)
    assert "SECRET-7f3a" not in "".join(chunks)
    assert "SECRET-7f3a" not in prompts
    for name, data in written.items():
        assert b"SECRET-7f3a" not in data, name
    assert b"%%abc-include" not in written["tune.abc"]  # the stored tune cannot do it later
    report = json.loads(written["report.json"])
    assert report["status"] == "done"
    faults = report["attempts"][-1]["check"]["faults"]
    assert any("abc-include" in fault["message"] for fault in faults)


@needs_programs("abc2midi")
def test_no_program_reads_the_file_a_tune_includes(tmp_path: Path) -> None:
    secret = tmp_path / "passwd"
    secret.write_text(SECRET + "\nT:SECRET-7f3a title\n", encoding="utf-8")
    for where in ("%%abc-include {}\nK:C\nCDEF|]\n", "K:C\nCDEF|]\n%%abc-include {}\n"):
        compiled = compile_abc("X:1\nT:Tune\nM:4/4\nL:1/4\n" + where.format(secret))
        assert "SECRET" not in compiled.check.model_dump_json()
        assert "0:0" not in compiled.check.model_dump_json()  # not even one character at a time
        assert compiled.check.ok and compiled.midi is not None
        assert b"SECRET" not in compiled.midi


# --- 3. Script in the report through the score. -----------------------------------------------

@needs_chromium
def test_the_report_runs_no_script_from_a_tune(browser: Browser, tmp_path: Path) -> None:  # noqa: F811
    hostile = TUNE.replace("K:D\n", "K:D\n%%musicfont \"serif}<?x ><img src=x "
                                    "onerror=window.pwned=1>?>\"\n")
    tune = hostile.replace("T:Dignity", "T:<img src=x onerror=window.pwned=2>")
    hostile_answer = answer(tune).replace("Motivation: ",
                                          "Motivation: <script>window.pwned=3</script>")
    # The same answer to every turn (the loop may ask again about the removed directive).
    model = ScriptedChatModel(replies=[DESCRIPTION, *[hostile_answer] * 8])
    result = compose(PHOTO, out_dir=tmp_path / "run", model_for=lambda _: model,
                     retriever_for=lambda _: Examples(), rag=False, refine=False,
                     explain="none")
    assert result.ok, result.error
    page = browser.new_page()
    try:
        page.goto((tmp_path / "run" / "report.html").as_uri())
        page.wait_for_load_state("load")  # after every image has loaded or failed
        assert page.evaluate("() => window.pwned") is None  # no handler or script of the model's
        shown = page.inner_text("body")
        styled = page.evaluate("() => getComputedStyle(document.body).maxWidth")
        score_width = page.locator("img[alt='The score']").evaluate(
            "image => image.naturalWidth")
    finally:
        page.close()
    assert "<script>window.pwned=3</script>" in shown  # the model's text, shown as text
    assert styled == "960px"  # the policy lets the report's own style sheet in, by its hash
    assert score_width > 0  # the score is still there, as an image
    svg = (tmp_path / "run" / "score.svg").read_text(encoding="utf-8")
    assert "<?x " not in svg and "<img" not in svg and "serif}" not in svg


# --- Limits: a tune that plays for an hour, a full server that decodes images anyway. ---------

@needs_programs("abc2midi")
def test_a_tune_that_would_play_for_minutes_is_a_parse_check_error() -> None:
    slow = "X:1\nT:Slow\nM:4/4\nL:1/4\nQ:1/4=30\nK:C\n" + "C4|D4|E4|F4|G4|A4|B4|c4|\n" * 15
    check = compile_abc(slow).check
    assert not check.ok
    assert any("s when played" in error.message for error in check.errors), check.feedback()


def test_a_full_server_refuses_before_it_decodes_an_image(tmp_path: Path) -> None:
    gate = Gate()  # the first run holds its place inside its model call until the test is done
    with img2music_server(tmp_path, gate, server_max_concurrent_runs=1,
                          server_max_queued_runs=0) as server:
        running = server.client.chat.completions.create(
            model="img2music", messages=image_message(), stream=True)
        first = next(iter(running))  # the run has its place
        junk = "data:image/png;base64," + base64.b64encode(b"not an image at all").decode()
        refused = post(server, {"model": "img2music", "messages": image_message(url=junk)})
        gate.opened.set()
        running.close()
    assert first.model_extra is not None
    assert refused.status_code == 429, refused.text
    assert len(list(server.runs.iterdir())) == 1  # the running one only


def test_old_runs_and_big_intermediates_do_not_pile_up(tmp_path: Path) -> None:
    old = tmp_path / "data" / "runs" / ("0" * 20)
    old.mkdir(parents=True)
    (old / "report.json").write_text("{}", encoding="utf-8")
    (old / "tune.wav").write_bytes(b"RIFF" + bytes(1000))
    long_ago = 1_000_000_000  # 2001
    for path in (old / "report.json", old / "tune.wav", old):
        os.utime(path, (long_ago, long_ago))
    with img2music_server(tmp_path) as server:
        completion = server.client.chat.completions.create(
            model="img2music", messages=image_message(),
            extra_body={"img2music": {"refine": False}})
        files = completion.model_extra["img2music"]["files"]  # type: ignore[index]
    assert not old.exists()
    assert "tune.ogg" in files and "tune.wav" not in files


# --- Image URLs: loopback and the cloud metadata address, with URLs allowed. -------------------

def no_runs(runs: Path) -> bool:
    """Nothing was left on disk: no run folder."""
    return not runs.exists() or not any(runs.iterdir())


@contextmanager
def counting_image_host() -> Iterator[tuple[int, list[str]]]:
    """A loopback web server that answers every GET with the photo, counting what it was asked."""
    asked: list[str] = []
    photo = PHOTO.read_bytes()

    class Host(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(photo)))
            self.end_headers()
            self.wfile.write(photo)

    host = ThreadingHTTPServer(("127.0.0.1", 0), Host)
    thread = threading.Thread(target=host.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield host.server_address[1], asked
    finally:
        host.shutdown()
        host.server_close()


def test_image_urls_cannot_reach_loopback_or_link_local_addresses(tmp_path: Path) -> None:
    with counting_image_host() as (port, asked), img2music_server(
            tmp_path, server_allow_image_urls="true") as server:
        urls = [f"http://127.0.0.1:{port}/photo.jpg", f"http://localhost:{port}/photo.jpg",
                f"http://[::1]:{port}/photo.jpg", "http://169.254.169.254/latest/meta-data/",
                "http://10.0.0.1/photo.jpg", f"http://127.0.0.1:{port + 1}/closed.jpg"]
        answers = [post(server, {"model": "img2music", "messages": image_message(url=url)})
                   for url in urls]
    assert asked == []  # nothing was fetched from loopback
    assert [response.status_code for response in answers] == [400] * len(urls)
    messages = {response.json()["error"]["message"] for response in answers}
    assert len(messages) == 1  # one text, whatever the address: no port scanning through it
    assert server.vlm.requests == [] and no_runs(server.runs)


# --- The Host header of a server without a key. -------------------------------------------------

def test_a_server_without_a_key_answers_only_its_own_host_names(tmp_path: Path) -> None:
    with img2music_server(tmp_path) as server:
        foreign = {"Host": "attacker.example"}
        refused = [httpx.get(f"{server.url}/v1/models", headers=foreign),
                   post(server, {"model": "img2music", "messages": image_message()}, **foreign)]
        own = httpx.get(f"{server.url}/v1/models")
        named = httpx.get(f"{server.url}/v1/models", headers={"Host": "localhost:8000"})
    assert [response.status_code for response in refused] == [400, 400]
    assert own.status_code == 200 and named.status_code == 200
    assert server.vlm.requests == [] and no_runs(server.runs)
    with img2music_server(tmp_path, server_allowed_hosts="music.example.org") as server:
        listed = httpx.get(f"{server.url}/v1/models", headers={"Host": "music.example.org"})
    assert listed.status_code == 200


# --- Secrets: not on a command line, not in a report, not in /health. --------------------------

def test_the_vllm_key_goes_in_its_environment_not_its_command_line(tmp_path: Path) -> None:
    record = tmp_path / "vllm-was-run.json"
    fake = tmp_path / "bin" / "vllm"
    fake.parent.mkdir()
    fake.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    f"open({str(record)!r}, 'w').write(json.dumps("
                    "{'argv': sys.argv, 'key': os.environ.get('VLLM_API_KEY')}))\n",
                    encoding="utf-8")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    environment = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}",
                   "IMG2MUSIC_VLM_API_KEY": VLM_KEY, "IMG2MUSIC_DATA_DIR": str(tmp_path)}
    result = subprocess.run([str(Path(sys.executable).with_name("img2music")), "vlm", "serve"],
                            env=environment, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    ran = json.loads(record.read_text(encoding="utf-8"))
    assert VLM_KEY not in " ".join(ran["argv"]) and "--api-key" not in ran["argv"]
    assert ran["key"] == VLM_KEY
    assert VLM_KEY not in result.stdout + result.stderr


def test_no_key_path_or_endpoint_credential_reaches_a_report_or_an_answer(
        tmp_path: Path) -> None:
    with scripted_server(reply_for) as vlm:
        with_credentials = vlm.url.replace("http://", "http://operator:hunter2@")
        with img2music_server(tmp_path, api_key=KEY, vlm_api_key=VLM_KEY,
                              vlm_base_url=with_credentials) as server:
            completion = server.client.chat.completions.create(
                model="img2music", messages=image_message(), extra_body={"img2music": {
                    "refine": False}})
            extension = completion.model_extra["img2music"]  # type: ignore[index]
            folder = server.runs / extension["run_id"]
            texts = [completion.model_dump_json(), httpx.get(f"{server.url}/health").text,
                     *(path.read_text(encoding="utf-8") for path in folder.iterdir()
                       if path.suffix in (".json", ".html", ".md", ".abc"))]
        assert extension["status"] == "done"
    for text in texts:
        for secret in (KEY, VLM_KEY, "hunter2", str(tmp_path)):
            assert secret not in text
    assert set(json.loads(texts[1])) == {"status"}  # /health without the key: ready or not


def test_keys_are_never_shown_by_the_settings() -> None:
    settings = Settings.model_validate({"api_key": KEY, "vlm_api_key": VLM_KEY,
                                        "judge_api_key": VLM_KEY + "-judge"})
    shown = repr(settings) + str(settings.model_dump()) + settings.model_dump_json()
    assert KEY not in shown and VLM_KEY not in shown


# --- A reader never meets half a report. ---------------------------------------------------------

def test_a_reader_of_the_report_never_sees_it_rewritten_under_it(tmp_path: Path) -> None:
    def run() -> None:
        model = ScriptedChatModel(replies=[DESCRIPTION, answer(TUNE)])
        result = compose(PHOTO, out_dir=tmp_path / "run", model_for=lambda _: model,
                         retriever_for=lambda _: Examples(), rag=False, refine=False,
                         explain="none")
        assert result.ok, result.error

    run()
    report = tmp_path / "run" / "report.json"
    before = report.read_bytes()
    with report.open("rb") as reader:
        run()  # the same folder again, while the old report is open
        assert reader.read() == before  # the old file, whole: replaced, never rewritten
    assert json.loads(report.read_bytes())["status"] == "done"
    assert [path.name for path in report.parent.iterdir() if path.name.startswith(".")] == []
