"""`img2music compose` end to end: real images, a scripted model server on loopback, real files."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from matplotlib import cbook
from PIL import Image, ImageDraw
from typer.testing import CliRunner, Result

from img2music.cli.main import app
from img2music.cli.output import console
from img2music.settings import Settings, get_settings
from img2music.tools.abc.check import check_abc
from img2music.tools.corpus.music21_corpus import iter_corpus_tunes
from img2music.tools.retrieval.embedder import load_embedder
from img2music.tools.retrieval.index import build_index
from tests.openai_server import last_user_text, scripted_server
from tests.realworld import papers_tune
from tests.test_graph import REFINED, TUNE, answer

PHOTO = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def respond(body: dict[str, Any]) -> str:
    text = last_user_text(body)
    if "Describe this image" in text:
        return "<think>a portrait</think>A calm portrait in warm light, dark uniform, a flag."
    if "Metrics of your tune" in text:
        return answer(REFINED)
    return answer(TUNE, think=True)


def img2music(tmp_path: Path, url: str, *arguments: str,
              **settings: str) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ, "IMG2MUSIC_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "200",
        "IMG2MUSIC_CLIP_MODEL": "img2music-tiny", "IMG2MUSIC_CLIP_PRETRAINED": "none",
        "IMG2MUSIC_VLM_BASE_URL": url, "IMG2MUSIC_VLM_MODEL": "scripted-vlm",
        "IMG2MUSIC_RAG_SOURCES": "abc-dir", **settings,
    }
    return subprocess.run([str(Path(sys.executable).with_name("img2music")), *arguments],
                          env=environment, capture_output=True, text=True, timeout=600,
                          check=False)


@pytest.fixture
def compose_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """`img2music` in this process, with `img2music()`'s settings: the commands' own code, with
    no new interpreter to import torch and transformers again (`compose` as its own process is
    tested above and below)."""
    monkeypatch.setattr(console, "width", 200)

    def invoke(url: str, *arguments: str, **settings: str) -> Result:
        for name, value in {"IMG2MUSIC_DATA_DIR": str(tmp_path / "data"),
                            "IMG2MUSIC_CLIP_MODEL": "img2music-tiny",
                            "IMG2MUSIC_CLIP_PRETRAINED": "none", "IMG2MUSIC_VLM_BASE_URL": url,
                            "IMG2MUSIC_VLM_MODEL": "scripted-vlm",
                            "IMG2MUSIC_RAG_SOURCES": "abc-dir", **settings}.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        return CliRunner().invoke(app, list(arguments))

    return invoke


def test_compose_writes_every_file_and_names_each_failure(tmp_path: Path) -> None:
    tunes = tmp_path / "tunes"
    tunes.mkdir()
    corpus = [t.text for _, t in zip(range(20), iter_corpus_tunes(("oneills1850",)),
                                     strict=False)]
    (tunes / "oneill.abc").write_text("\n".join(corpus), encoding="utf-8")
    images = tmp_path / "images"
    images.mkdir()
    (images / "portrait.jpg").write_bytes(PHOTO.read_bytes())
    drawing = Image.new("RGBA", (320, 200), (20, 40, 120, 255))
    ImageDraw.Draw(drawing).ellipse((200, 30, 280, 110), fill=(250, 200, 60, 255))
    drawing.save(images / "sunset.png")
    (images / "notes.jpg").write_text("not an image", encoding="utf-8")
    (images / "empty.png").write_bytes(b"")
    settings = Settings(data_dir=tmp_path / "data", clip_model="img2music-tiny",
                        clip_pretrained="none")  # as img2music() sets them for the command
    built = build_index("abc-dir", load_embedder(settings), path=tunes, settings=settings)
    assert built.added > 0
    with scripted_server(respond) as server:
        result = img2music(tmp_path, server.url, "compose", str(images), "--out",
                           str(tmp_path / "out"), "--note", "solemn", "-k", "2",
                           "--explain", "none", "--concurrency", "2")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "notes.jpg: " in result.stderr and "not a usable image" in result.stderr
    assert "empty.png: " in result.stderr and "the file is empty" in result.stderr
    for name in ("portrait", "sunset"):
        folder = tmp_path / "out" / name
        written = {path.name for path in folder.iterdir()}
        assert {"tune.abc", "tune.mid", "tune.ogg", "score.svg", "motivation.md",
                "report.json", "report.html"} <= written, written
        assert check_abc((folder / "tune.abc").read_text()).ok
        assert (folder / "tune.abc").read_text() == REFINED
        report = json.loads((folder / "report.json").read_text())
        assert report["status"] == "done"
        assert [a["kind"] for a in report["attempts"]] == ["compose", "refine"]
        # The scripted server is vLLM-like, so the grammar is sent; its first answer opens with a
        # reasoning block the grammar leaves out when thinking is off, so only the refined one
        # counts as written under it.
        assert [a["constrained"] for a in report["attempts"]] == [False, True]
        assert len(report["examples"]) == 2
        assert report["prompt_set"]["name"] == "default" and report["prompt_set"]["hash"]
        assert "data:image (omitted)" in json.dumps(report["conversation"])
        html = (folder / "report.html").read_text()
        assert "<audio controls" in html and "data:image/jpeg;base64" in html
        assert '<img src="data:image/svg+xml;base64,' in html  # the score, as an image
        assert "<th>written under the grammar</th>" in html
    for name in ("notes", "empty"):
        assert not (tmp_path / "out" / name / "tune.abc").exists()
    assert len(server.requests) == 2 * 3  # describe, compose, refine for each good image
    assert all(request["model"] == "scripted-vlm" for request in server.requests)


def test_attention_maps_from_a_local_copy_while_composing_remotely(
    tmp_path: Path, compose_here: Callable[..., Result]
) -> None:
    from tests.tiny_vlm import build_tiny_vlm

    model, processor = build_tiny_vlm(eager=True)
    model.save_pretrained(tmp_path / "tiny-vlm")
    processor.save_pretrained(tmp_path / "tiny-vlm")
    with scripted_server(respond) as server:
        result = compose_here(server.url, "compose", str(PHOTO), "--out",
                              str(tmp_path / "out"), "--no-rag", "--explain", "attention",
                              "--seed", "7",
                              IMG2MUSIC_ATTENTION_MODEL=str(tmp_path / "tiny-vlm"))
    assert result.exit_code == 0, result.output
    folder = tmp_path / "out" / "grace_hopper"
    report = json.loads((folder / "report.json").read_text())
    assert report["settings"]["seed"] == 7
    assert all(isinstance(request.get("seed"), int) for request in server.requests)
    assert report["explanation"]["method"] == "attention"
    assert set(report["explanation"]["sections"]) == {"theme", "close"}
    assert (folder / "attention.png").read_bytes().startswith(b"\x89PNG")
    maps = report["attention_maps"]
    assert maps["method"] == "attention" and maps["file"] == "attention.png"
    assert maps["sections"] == [{"name": "theme", "file": "attention-1.png"},
                                {"name": "close", "file": "attention-2.png"}]
    for section in maps["sections"]:
        assert (folder / section["file"]).read_bytes().startswith(b"\x89PNG")
        assert section["file"] in report["files"]
    html = (folder / "report.html").read_text()
    assert "attention of the tune&#39;s tokens" in html and "section close" in html


def test_the_local_backend_runs_end_to_end_and_fails_cleanly_on_noise(tmp_path: Path) -> None:
    """A random-weight model writes noise, never a tune: the run must still end, in one line."""
    from tests.tiny_vlm import build_tiny_vlm

    model, processor = build_tiny_vlm(eager=False)
    model.save_pretrained(tmp_path / "tiny-vlm")
    processor.save_pretrained(tmp_path / "tiny-vlm")
    environment = {**os.environ, "IMG2MUSIC_DATA_DIR": str(tmp_path / "data"),
                   "IMG2MUSIC_VLM_BACKEND": "local",
                   "IMG2MUSIC_VLM_MODEL": str(tmp_path / "tiny-vlm"),
                   "IMG2MUSIC_VLM_MAX_TOKENS": "24", "IMG2MUSIC_MAX_REPAIRS": "1"}
    result = subprocess.run(
        [str(Path(sys.executable).with_name("img2music")), "compose", str(PHOTO), "--out",
         str(tmp_path / "out"), "--no-rag", "--explain", "none"],
        env=environment, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "no valid tune within the limits" in result.stderr
    report = json.loads((tmp_path / "out" / "grace_hopper" / "report.json").read_text())
    assert [a["kind"] for a in report["attempts"]] == ["compose", "repair"]
    assert report["usage"]["compose"]["output_tokens"] > 0
    assert not (tmp_path / "out" / "grace_hopper" / "tune.abc").exists()


def test_a_batch_killed_midway_keeps_every_image_it_finished(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a-first", "b-second"):
        (images / f"{name}.jpg").write_bytes(PHOTO.read_bytes())
    calls = itertools.count()
    second_image_asked, release = threading.Event(), threading.Event()

    def stall_after_the_first_image(body: dict[str, Any]) -> str:
        if next(calls) >= 3:  # describe, compose, refine of the first image answer; then stall
            second_image_asked.set()
            release.wait(120)
        return respond(body)

    environment = {**os.environ, "IMG2MUSIC_DATA_DIR": str(tmp_path / "data")}
    with scripted_server(stall_after_the_first_image) as server:
        environment.update(IMG2MUSIC_VLM_BASE_URL=server.url, IMG2MUSIC_VLM_MODEL=server.model)
        batch = subprocess.Popen(
            [str(Path(sys.executable).with_name("img2music")), "compose", str(images), "--out",
             str(tmp_path / "out"), "--no-rag", "--explain", "none", "--concurrency", "1"],
            env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert second_image_asked.wait(300), "the batch never reached the second image"
        assert batch.poll() is None
        batch.kill()
        batch.wait(timeout=30)
        release.set()
    first = tmp_path / "out" / "a-first"
    assert check_abc((first / "tune.abc").read_text()).ok
    assert json.loads((first / "report.json").read_text())["status"] == "done"
    assert (first / "tune.ogg").read_bytes()[:4] == b"OggS"
    assert "</html>" in (first / "report.html").read_text()
    assert not (tmp_path / "out" / "b-second" / "tune.abc").exists()


def test_the_papers_tune_is_delivered_and_its_faults_summed_up_in_one_line(
    tmp_path: Path, compose_here: Callable[..., Result]
) -> None:
    """Keye-VL-8B's tune from the paper (Fig. 2a), from a model that never fixes it: every bar
    is short, yet it plays, so it is written out with what a musician would correct."""
    def never_fixes(body: dict[str, Any]) -> str:
        return respond(body) if "Describe this image" in last_user_text(body) else papers_tune()

    with scripted_server(never_fixes) as server:
        result = compose_here(server.url, "compose", str(PHOTO), "--out",
                              str(tmp_path / "out"), "--no-rag", "--explain", "none")
    assert result.exit_code == 0, result.output
    folder = tmp_path / "out" / "grace_hopper"
    summary = [line for line in result.stdout.splitlines() if "tune.abc" in line]
    assert len(summary) == 1
    assert summary[0].startswith(f"{PHOTO}: {folder / 'tune.abc'} (28 faults a musician would "
                                 "correct; first: line 8, col 13: bar 2 lasts 3/8 but M:6/4")
    assert check_abc((folder / "tune.abc").read_text()).fault_count == 28
    report = json.loads((folder / "report.json").read_text())
    assert report["status"] == "done" and report["fault_count"] == 28
    assert report["faults"][0].startswith("line 8, col 13: bar 2 lasts 3/8")
    assert len(server.requests) == 4  # describe, compose, the repair, the refinement
    html = (folder / "report.html").read_text()
    assert "What a musician would still correct" in html and "bar 2 lasts 3/8" in html
