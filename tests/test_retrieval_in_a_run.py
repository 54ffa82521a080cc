"""Retrieval as a run meets it: the index built on first use (with its progress shown by
`compose`, `serve`, `/health` and `doctor`), several sources searched at once, and a Chroma
server instead of the embedded index."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import chromadb
import httpx
import numpy as np
import pytest
from chromadb.config import Settings as ChromaSettings
from typer.testing import CliRunner

from img2music.cli.main import app
from img2music.cli.output import console
from img2music.pipeline.index_build import IndexBuild, progress_line
from img2music.pipeline.runs import compose
from img2music.server.app import create_app
from img2music.settings import Settings, get_settings
from img2music.tools.corpus import music21_corpus
from img2music.tools.corpus.ingest import iter_records
from img2music.tools.corpus.records import MusicRecord
from img2music.tools.retrieval import index
from img2music.tools.retrieval.embedder import load_embedder
from img2music.tools.retrieval.index import (
    BuildReport,
    build_index,
    ensure_index,
    index_complete,
    index_info,
    open_collection,
)
from img2music.tools.retrieval.retriever import Retriever
from tests.openai_server import ScriptedServer, last_user_text, scripted_server
from tests.serving import listening_port, served
from tests.test_graph import PHOTO, reply_for
from tests.test_retrieval import TEXT, Space, meta, unit
from tests.test_serve_cli import doctor_table
from tests.test_sources import EVENING, MORNING, WALTZ_LATIN1

CHROMA = Path(sys.executable).with_name("chroma")


@pytest.fixture
def tiny_clip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMG2MUSIC_CLIP_MODEL", "img2music-tiny")
    monkeypatch.setenv("IMG2MUSIC_CLIP_PRETRAINED", "none")
    get_settings.cache_clear()


@pytest.fixture
def small_corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """music21's corpus cut to one real file of O'Neill's tunes (50 tunes, not 13,000), so a
    first-use build takes seconds; everything that reads it is the real code."""
    root = tmp_path / "corpus"
    (root / "oneills1850").mkdir(parents=True)
    shutil.copy(music21_corpus.corpus_root() / "oneills1850" / "0001-0050.abc",
                root / "oneills1850")
    monkeypatch.setattr(music21_corpus, "corpus_root", lambda: root)
    return root


@pytest.fixture
def vlm(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedServer]:
    with scripted_server(reply_for) as server:
        monkeypatch.setenv("IMG2MUSIC_VLM_BASE_URL", server.url)
        monkeypatch.setenv("IMG2MUSIC_VLM_MODEL", server.model)
        get_settings.cache_clear()
        yield server


def test_a_run_without_an_index_builds_it_and_retrieves_from_it(
    tmp_path: Path, tiny_clip: None, small_corpus: Path, vlm: ScriptedServer
) -> None:
    settings = get_settings()
    assert index_info(settings) == []  # nothing built: the run must build it
    result = compose(PHOTO, out_dir=tmp_path / "out", rag_k=3, refine=False, explain="none")
    assert result.ok, result.error

    [info] = index_info(settings)
    assert (info.source, info.embedder) == ("music21", "img2music-tiny|none|ctx77")
    records = [r for r in iter_records("music21", settings=settings) if isinstance(r, MusicRecord)]
    assert info.records == len(records) > 0  # all of the (small) corpus, not a part
    collection = open_collection("music21", info.embedder, settings=settings)
    assert collection is not None and (collection.metadata or {}).get("complete") is True
    examples = result.report["examples"]
    assert len(examples) == 3
    stored = collection.get(ids=[e["id"] for e in examples], include=["documents"])
    assert sorted(stored["ids"]) == sorted(e["id"] for e in examples)
    assert all(e["id"].startswith("music21:oneills1850/0001-0050.abc:") for e in examples)
    assert [e["caption"] for e in examples] == [
        stored["documents"][stored["ids"].index(e["id"])] for e in examples]  # type: ignore[index]
    compose_prompt = next(last_user_text(body) for body in vlm.requests
                          if "Compose an original piece" in last_user_text(body))
    assert all(e["caption"] in compose_prompt for e in examples)
    assert ensure_index("music21", load_embedder(settings), settings=settings) is None


SMALL_BATCH = 16  # the small corpus's 50 tunes in four batches: 16, 32, 48, 50 done
TUNES = 50


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index, "INGEST_BATCH", SMALL_BATCH)


def test_a_first_use_build_reports_its_progress_after_every_batch(
    tiny_clip: None, small_corpus: Path, small_batches: None
) -> None:
    seen: list[BuildReport] = []
    build = IndexBuild(get_settings(), after_batch=seen.append)
    assert build.needed()

    report = build.run()

    assert report is not None and (report.done, report.total) == (TUNES, TUNES)
    assert [r.done for r in seen] == [16, 32, 48, 50]
    assert all(r.total == TUNES and r.rate is not None and r.rate > 0 for r in seen)
    assert all(r.seconds_left is not None and r.seconds_left > 0 for r in seen[:-1])
    assert seen[-1].seconds_left == 0
    assert re.fullmatch(r"16 of 50 tunes, \d+\.\d tunes/s, about \d+ (s|min) left",
                        progress_line(seen[0])), progress_line(seen[0])
    assert re.fullmatch(r"50 of 50 tunes, \d+\.\d tunes/s, done in \d+ (s|min)",
                        progress_line(seen[-1])), progress_line(seen[-1])
    assert build.state == "done" and not build.needed()
    assert IndexBuild(get_settings()).run() is None  # complete: nothing more to do


def test_compose_builds_the_index_before_the_runs_with_a_bar_and_says_why_once(
    tmp_path: Path, tiny_clip: None, small_corpus: Path, vlm: ScriptedServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(console, "width", 250)
    images = tmp_path / "images"
    images.mkdir()
    for name in ("first.jpg", "second.jpg"):
        shutil.copy(PHOTO, images / name)
    arguments = ["-k", "3", "--no-refine", "--explain", "none"]

    result = CliRunner().invoke(app, ["compose", str(images), "--out", str(tmp_path / "out"),
                                      *arguments])

    assert result.exit_code == 0, result.output
    assert result.stdout.count("is not built yet: building it now, before the first run. "
                               "This happens once") == 1
    assert re.search(r"indexing music21 .* 50 of 50 tunes, \d+\.\d tunes/s, done in \d+ "
                     r"(s|min)", result.stdout), result.stdout
    assert result.stdout.index("50 of 50 tunes") < result.stdout.index("first.jpg: done")
    for name in ("first", "second"):
        report = json.loads((tmp_path / "out" / name / "report.json").read_text())
        assert len(report["examples"]) == 3
        assert all(e["id"].startswith("music21:oneills1850/") for e in report["examples"])

    again = CliRunner().invoke(app, ["compose", str(images / "first.jpg"), "--out",
                                     str(tmp_path / "again"), *arguments])
    assert again.exit_code == 0, again.output
    assert "not built yet" not in again.stdout and "indexing" not in again.stdout


def test_eval_builds_the_index_first_when_a_variant_retrieves(
    tmp_path: Path, tiny_clip: None, small_corpus: Path, vlm: ScriptedServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(console, "width", 250)
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(PHOTO, images / "portrait.jpg")
    arguments = ["eval", "--images", str(images), "--no-judge", "--no-clip", "--repeats", "1"]

    without = CliRunner().invoke(app, [*arguments, "--variants", "no-rag-no-refine",
                                       "--out", str(tmp_path / "without")])
    assert without.exit_code == 0, without.output
    assert "not built yet" not in without.stdout and index_info(get_settings()) == []

    result = CliRunner().invoke(app, [*arguments, "--variants", "no-refine",
                                      "--out", str(tmp_path / "with")])
    assert result.exit_code == 0, result.output
    assert result.stdout.count("is not built yet: building it now") == 1
    assert re.search(r"indexing music21 .* 50 of 50 tunes", result.stdout), result.stdout
    report = json.loads((tmp_path / "with" / "runs" / "no-refine" / "portrait" /
                         "report.json").read_text())
    assert len(report["examples"]) == 4
    assert all(e["id"].startswith("music21:oneills1850/") for e in report["examples"])


@dataclass
class HeldBuild:
    """A server whose start-up index build is held after its first batch until `release`."""

    url: str
    build: IndexBuild
    released: threading.Event

    def release(self) -> None:
        self.released.set()


@contextmanager
def serving_while_building(settings: Settings) -> Iterator[HeldBuild]:
    """`create_app` as `serve` calls it, the build held at a known point (after its first
    committed batch) for as long as the test needs: no sleeps, nothing to race."""
    held, released = threading.Event(), threading.Event()

    def hold(report: BuildReport) -> None:
        if report.done == SMALL_BATCH:
            held.set()
            if not released.wait(120):
                raise RuntimeError("the test never released the build")

    build = IndexBuild(settings, after_batch=hold)
    with served(create_app(settings, index_build=build)) as url:
        try:
            if not held.wait(120):
                raise RuntimeError(f"the build never reached its first batch ({build.state}: "
                                   f"{build.error})")
            yield HeldBuild(url=url, build=build, released=released)
        finally:
            released.set()


def test_serve_builds_the_index_at_start_and_health_and_doctor_show_how_far(
    tiny_clip: None, small_corpus: Path, small_batches: None, vlm: ScriptedServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(console, "width", 400)  # each row of the doctor's table on one line
    settings = get_settings()
    items = list(iter_records("music21", settings=settings))
    records = sum(isinstance(item, MusicRecord) for item in items)  # skipped tunes are not stored
    stored = sum(isinstance(item, MusicRecord) for item in items[:SMALL_BATCH])
    with serving_while_building(settings) as server:
        during = httpx.get(f"{server.url}/health", timeout=30).json()
        doctor = CliRunner().invoke(app, ["doctor"])  # another reader, as from another process
        server.release()
        assert server.build.wait(120)
        after = httpx.get(f"{server.url}/health", timeout=30).json()

    building = during["index_build"]
    assert (building["source"], building["state"]) == ("music21", "building")
    assert (building["done"], building["total"]) == (SMALL_BATCH, TUNES)
    assert building["rate_per_s"] > 0 and building["seconds_left"] > 0
    assert building["line"].startswith("16 of 50 tunes, ")
    [check] = [c for c in during["checks"] if c["name"] == "index music21"]
    assert check["status"] == "warning" and "building now: 16 of 50 tunes" in check["detail"]
    assert during["status"] == "ready"  # runs are served; retrieval waits for the index

    status, found, _ = doctor_table(doctor.stdout)["index music21"]
    assert status == "warning", doctor.stdout
    assert f"partly built: {stored} of 50 tunes stored" in found
    assert "another process is building it now" in found
    assert re.search(r"a whole build takes about \d+ (s|min) here with CLIP img2music-tiny "
                     r"\(none\) \(measured on \d+ tunes\)", found), found

    assert "index_build" not in after and after["status"] == "ready"
    [check] = [c for c in after["checks"] if c["name"] == "index music21"]
    assert (check["status"], check["detail"]) == (
        "ok", f"{records} tunes, img2music-tiny|none|ctx77")
    assert index_complete("music21", load_embedder(settings), settings=settings)


def test_several_sources_are_searched_as_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows: dict[str, dict[str, tuple[Any, dict[str, str]]]] = {
        "abc-dir": {"a-best": (unit(0.1, 1), meta("a-best", body="G2 | A2 B2 c2 |]")),
                    "a-third": (unit(0.6, 1), meta("a-third", body="A2 | B2 c2 d2 |]"))},
        "midicaps": {"m-second": (unit(0.3, 1), meta("m-second", body="B2 | c2 d2 e2 |]")),
                     "m-fourth": (unit(1, 0.9), meta("m-fourth", body="c2 | d2 e2 f2 |]"))},
        "music21": {"not-asked": (unit(0, 1), meta("not-asked", body="d2 | e2 f2 g2 |]"))},
    }
    settings = Settings(data_dir=tmp_path)
    for source, records in rows.items():
        collection = open_collection(source, Space.name, settings=settings, create=True)
        assert collection is not None
        collection.add(ids=list(records), embeddings=np.stack([v for v, _ in records.values()]),
                       documents=list(records), metadatas=[m for _, m in records.values()])
    monkeypatch.setenv("IMG2MUSIC_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("IMG2MUSIC_RAG_SOURCES", "abc-dir, midicaps")
    get_settings.cache_clear()

    found = Retriever(Space()).search(None, TEXT, k=4)

    asked = {name: vector for source in ("abc-dir", "midicaps")
             for name, (vector, _) in rows[source].items()}
    by_hand = sorted(asked, key=lambda name: -float(asked[name] @ TEXT))
    assert [e.id for e in found] == by_hand == ["a-best", "m-second", "a-third", "m-fourth"]
    assert [e.text_similarity for e in found] == pytest.approx(
        [float(asked[name] @ TEXT) for name in by_hand])


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`chroma run` (the CLI that ships with chromadb) on a loopback port it chose."""
    folder = tmp_path_factory.mktemp("chroma")
    log = (folder / "chroma.log").open("w")
    process = subprocess.Popen([str(CHROMA), "run", "--path", str(folder / "db"), "--host",
                                "127.0.0.1", "--port", "0"], cwd=folder, stdout=log,
                               stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{listening_port(process, timeout_s=60)}"
        deadline = time.monotonic() + 60
        while True:  # listening comes a moment before answering
            try:
                if httpx.get(f"{url}/api/v2/heartbeat", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("chroma run did not start: "
                                   + (folder / "chroma.log").read_text()[-2000:])
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def test_a_chroma_server_holds_the_index_instead_of_the_data_folder(
    tmp_path: Path, tiny_clip: None, chroma_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "tunes"
    (folder / "sub").mkdir(parents=True)
    (folder / "morning.abc").write_text(MORNING, encoding="utf-8")
    (folder / "sub" / "evening.abc").write_text(EVENING, encoding="utf-8")
    (folder / "waltz.abc").write_bytes(WALTZ_LATIN1.encode("latin-1"))
    monkeypatch.setenv("IMG2MUSIC_CHROMA_URL", chroma_server)
    monkeypatch.setenv("IMG2MUSIC_RAG_SOURCES", "abc-dir")
    get_settings.cache_clear()
    settings = get_settings()
    embedder = load_embedder(settings)

    report = build_index("abc-dir", embedder, path=folder)
    assert report.added == 4
    found = Retriever(embedder).retrieve(description="a calm evening waltz", k=4)

    assert sorted(e.id for e in found) == sorted([
        "abc-dir:tunes/morning.abc:1", "abc-dir:tunes/sub/evening.abc:1",
        "abc-dir:tunes/sub/evening.abc:9", "abc-dir:tunes/waltz.abc:1"])
    assert not settings.index_dir.exists()  # nothing went to the embedded index
    server = chromadb.HttpClient(host="127.0.0.1", port=int(chroma_server.rsplit(":", 1)[1]),
                                 settings=ChromaSettings(anonymized_telemetry=False))
    [listed] = [c for c in server.list_collections() if c.name == report.collection]
    assert server.get_collection(listed.name).count() == 4
