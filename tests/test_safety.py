"""The defences behind tests/test_attacks.py, one by one: the template sandbox, the operator's
fields, run retention, atomic files, the index's writer lock, image URLs, Host and body type."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL.Image import Image

from img2music.graph.context import Context, RunOverrideRefused
from img2music.pipeline.retention import prune_runs
from img2music.pipeline.runs import compose
from img2music.prompt_files import check_prompt_edits, render_prompt
from img2music.settings import Settings, get_settings
from img2music.templating import TemplateRefused
from img2music.tools.files import write_atomic
from img2music.tools.retrieval.index import (
    IndexBusy,
    Vector,
    build_index,
    index_writer,
    open_collection,
)
from tests.scripted import ScriptedChatModel
from tests.test_compose_cli import PHOTO
from tests.test_graph import DESCRIPTION, TUNE, Examples, answer
from tests.test_server import image_message, img2music_server, post

# --- The template sandbox. ----------------------------------------------------------------------

ESCAPES = {
    "globals through a helper": "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "the class tree": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "lipsum's globals": "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "the template's context": "{{ self._TemplateReference__context }}",
    "a format string's attribute": "{{ '{0.__class__}'.format(note) }}",
    "a list changed in place": "{% set x = examples.append(1) %}{{ examples }}",
    "a string of a gigabyte": "{{ 'a' * 1000000000 }}",
    "a huge power": "{{ 10 ** 100000 }}",
    "a loop of a billion": "{% for i in range(1000000000) %}{% endfor %}",
    "a template too long": "x" * 60_000,
    "bad syntax": "{% if %}",
    "a missing variable": "{{ nothing_here }}",
}


@pytest.mark.parametrize("template", ESCAPES.values(), ids=ESCAPES.keys())
def test_an_edited_template_that_breaks_a_rule_is_refused_in_one_line(template: str) -> None:
    with pytest.raises(TemplateRefused) as refused:
        check_prompt_edits({"compose.j2": template}, {"compose.j2": "compose_prompt (edited)"})
    message = str(refused.value)
    assert message.startswith("the template compose_prompt (edited) was refused: ")
    assert "\n" not in message


def test_the_shipped_prompts_render_in_the_sandbox() -> None:
    text = render_prompt("compose.j2", description="A lake.", note="calm", examples=[],
                         max_bars=32, thinking="/no_think", sees_image=True, asked=None)
    assert "A lake." in text and "calm" in text


def test_a_run_may_not_move_the_model_or_the_prompt_folder_unless_allowed(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for field, value in (("vlm_base_url", "http://elsewhere.example/v1"),
                         ("vlm_model", str(tmp_path)), ("prompts_dir", str(tmp_path))):
        overrides: dict[str, Any] = {field: value}
        with pytest.raises(RunOverrideRefused, match=field):
            Context(**overrides)  # as LangGraph's API builds it from a request
        assert getattr(Context.from_settings(get_settings(), **overrides), field) == value
    assert Context(rag_k=2, vlm_temperature=0.1).rag_k == 2  # the rest stays the run's to choose
    monkeypatch.setenv("IMG2MUSIC_ALLOW_RUN_OVERRIDES", "true")
    get_settings.cache_clear()
    try:
        assert Context(vlm_base_url="http://elsewhere.example/v1").vlm_base_url.startswith("http")
    finally:
        monkeypatch.delenv("IMG2MUSIC_ALLOW_RUN_OVERRIDES")
        get_settings.cache_clear()


# --- Run folders: retention, the WAV, atomic files. ---------------------------------------------

def run_folder(root: Path, name: str, *, size: int, age_days: float, now: float,
               finished: bool = True) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "tune.ogg").write_bytes(bytes(size))
    if finished:
        (folder / "report.json").write_text("{}", encoding="utf-8")
    when = now - age_days * 86_400
    for path in [*folder.iterdir(), folder]:
        os.utime(path, (when, when))
    return folder


def test_old_and_oversized_runs_are_deleted_oldest_first(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, runs_max_age_days=30, runs_max_bytes=3_100)
    root, now = tmp_path / "runs", 2_000_000_000.0
    ancient = run_folder(root, "ancient", size=10, age_days=40, now=now)
    old = run_folder(root, "old", size=1_000, age_days=3, now=now)
    busy = run_folder(root, "busy", size=1_000, age_days=2, now=now)
    unfinished = run_folder(root, "unfinished", size=1_000, age_days=2, now=now, finished=False)
    new = run_folder(root, "new", size=1_000, age_days=1, now=now)
    outside = tmp_path / "keep-me.txt"
    outside.write_text("not a run", encoding="utf-8")
    (root / "link").symlink_to(tmp_path)
    pruned = prune_runs(root, settings, keep=[busy], now=now)
    assert sorted(pruned.removed) == ["ancient", "old"]
    assert not ancient.exists() and not old.exists()
    assert busy.exists() and unfinished.exists() and new.exists() and outside.exists()
    assert pruned.kept_bytes <= 3_100  # busy, unfinished and new: in use, or young enough


def test_the_wav_is_kept_only_when_asked(tmp_path: Path) -> None:
    def run(folder: str, settings: Settings) -> set[str]:
        model = ScriptedChatModel(replies=[DESCRIPTION, answer(TUNE)])
        result = compose(PHOTO, out_dir=tmp_path / folder, settings=settings,
                         model_for=lambda _: model, retriever_for=lambda _: Examples(),
                         rag=False, refine=False, explain="none")
        assert result.ok, result.error
        return set(result.files)

    assert "tune.wav" not in run("default", get_settings())
    assert {"tune.wav", "tune.ogg"} <= run("kept", get_settings().model_copy(
        update={"keep_wav": True}))


def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_litter(tmp_path: Path) -> None:
    target = write_atomic(tmp_path / "report.json", "old")

    class Unwritable(str):
        def encode(self, *args: Any, **kwargs: Any) -> bytes:
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, Unwritable("new"))
    assert target.read_text() == "old"
    assert [path.name for path in tmp_path.iterdir()] == ["report.json"]


# --- The embedded index's writer lock. ----------------------------------------------------------

class Random8:
    """An embedder of random vectors: the lock, not the meaning, is under test."""

    name = "random-8d"

    def embed_texts(self, texts: Sequence[str]) -> Vector:
        vectors = np.random.default_rng(0).normal(size=(len(texts), 8))
        return np.asarray(vectors / np.linalg.norm(vectors, axis=1, keepdims=True),
                          dtype=np.float32)

    def embed_images(self, images: Sequence[Image]) -> Vector:
        raise AssertionError("not used")


HOLD_LOCK = """
import sys
from pathlib import Path
from img2music.settings import Settings
from img2music.tools.retrieval.index import index_writer
with index_writer(Settings(data_dir=Path(sys.argv[1]))):
    print("holding", flush=True)
    sys.stdin.readline()
"""


def test_two_processes_never_write_the_index_at_once(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        with pytest.raises(IndexBusy, match="another process"):
            build_index("music21", Random8(), limit=3, settings=settings, wait_s=0.5)
        assert open_collection("music21", Random8.name, settings=settings) is None
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.close()
        holder.wait(timeout=60)
    report = build_index("music21", Random8(), limit=3, settings=settings, wait_s=5)
    assert report.added == 3
    with index_writer(settings, wait_s=0):  # released: free again
        pass


# --- Image URLs within an allowed network; Host names; the body's type. -------------------------

@contextmanager
def redirecting_host(target: str) -> Iterator[int]:
    """A loopback server that answers every GET with a redirect to `target` (`{port}`: its own)."""
    location: list[str] = []

    class Host(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", location[0])
            self.send_header("Content-Length", "0")
            self.end_headers()

    host = ThreadingHTTPServer(("127.0.0.1", 0), Host)
    port = int(host.server_address[1])
    location.append(target.format(port=port))
    thread = threading.Thread(target=host.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield port
    finally:
        host.shutdown()
        host.server_close()


def test_an_image_url_may_not_redirect_to_another_host(tmp_path: Path) -> None:
    with redirecting_host("http://localhost:{port}/elsewhere.jpg") as port, img2music_server(
            tmp_path, server_allow_image_urls="true",
            server_image_url_networks="127.0.0.0/8,::1/128") as server:
        response = post(server, {"model": "img2music", "messages": image_message(
            url=f"http://127.0.0.1:{port}/photo.jpg")})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_image_url"


def test_a_body_that_is_not_json_is_refused(tmp_path: Path) -> None:
    with img2music_server(tmp_path) as server:
        response = httpx.post(f"{server.url}/v1/chat/completions", timeout=60,
                              content=b'{"model": "img2music", "messages": []}',
                              headers={"Content-Type": "text/plain"})
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"
    assert server.vlm.requests == []
