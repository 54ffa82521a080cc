"""Retrieval as a run meets it: the index built on first use, several sources searched at once,
and a Chroma server instead of the embedded index."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import chromadb
import httpx
import numpy as np
import pytest
from chromadb.config import Settings as ChromaSettings

from img2music.runs import compose
from img2music.settings import Settings, get_settings
from img2music.tools import music21_corpus
from img2music.tools.embedder import load_embedder
from img2music.tools.index import build_index, ensure_index, index_info, open_collection
from img2music.tools.retrieve import Retriever
from img2music.tools.sources import MusicRecord, iter_records
from tests.openai_server import ScriptedServer, last_user_text, scripted_server
from tests.serving import listening_port
from tests.test_graph import PHOTO, reply_for
from tests.test_retrieval import TEXT, Space, meta, unit
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
