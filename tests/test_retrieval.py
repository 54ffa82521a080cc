"""Retrieval over a real Chroma index: fusion, filters, de-duplication, trimming, resuming."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL.Image import Image
from typer.testing import CliRunner, Result

from img2music.cli.main import app
from img2music.cli.output import console
from img2music.settings import Fusion, Settings, get_settings
from img2music.tools.abc.check import check_abc
from img2music.tools.corpus.music21_corpus import iter_corpus_tunes
from img2music.tools.retrieval.embedder import load_embedder
from img2music.tools.retrieval.index import (
    IndexMismatch,
    Vector,
    build_index,
    collection_name,
    ensure_index,
    index_info,
    open_collection,
)
from img2music.tools.retrieval.retriever import NoIndex, Retriever, fuse, trim_abc
from tests.fixtures import make_midicaps_folder

TUNE = "X:1\nT:{title}\nM:{meter}\nL:1/8\nK:G\n{body}\n"


def offline_settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": tmp_path, "clip_model": "img2music-tiny", "clip_pretrained": "none",
        **overrides,
    }
    return Settings.model_validate(values)


class Space:
    """A fixed vector space for exact fusion tests; the real embedder is tested below."""

    name = "synthetic-8d"

    def embed_texts(self, texts: Sequence[str]) -> Vector:
        raise AssertionError("search() takes vectors")

    def embed_images(self, images: Sequence[Image]) -> Vector:
        raise AssertionError("search() takes vectors")


def unit(*values: float) -> Vector:
    vector = np.zeros(8, dtype=np.float32)
    vector[: len(values)] = values
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def synthetic_index(settings: Settings, rows: dict[str, tuple[Vector, dict[str, str]]]) -> None:
    collection = open_collection("music21", Space.name, settings=settings, create=True)
    assert collection is not None
    collection.add(
        ids=list(rows), embeddings=np.stack([vector for vector, _ in rows.values()]),
        documents=[f"caption of {name}" for name in rows],
        metadatas=[meta for _, meta in rows.values()],
    )


def meta(title: str, meter: str = "3/4", body: str = "D2 | G2 B2 d2 |]") -> dict[str, str]:
    return {"title": title, "meter": meter, "abc": TUNE.format(title=title, meter=meter, body=body)}


IMAGE, TEXT = unit(1, 0, 0), unit(0, 1, 0)


def test_fusion_puts_first_the_record_best_by_both(tmp_path: Path) -> None:
    settings = offline_settings(tmp_path)
    synthetic_index(settings, {
        "both": (unit(1, 1, 0.2), meta("both", body="G2 | A2 B2 c2 |]")),
        "image only": (unit(1, 0.05, 1.2), meta("image only", body="A2 | B2 c2 d2 |]")),
        "text only": (unit(0.05, 1, 1.2), meta("text only", body="B2 | c2 d2 e2 |]")),
        "neither": (unit(0, 0, 1), meta("neither", body="c2 | d2 e2 f2 |]")),
    })
    retriever = Retriever(Space(), settings=settings)
    fusions: tuple[Fusion, ...] = ("rrf", "weighted")
    for fusion in fusions:
        found = retriever.search(IMAGE, TEXT, k=3, fusion=fusion)
        assert found[0].id == "both"
        assert found[0].image_similarity == pytest.approx(float(unit(1, 1, 0.2) @ IMAGE))
        assert found[0].text_similarity == pytest.approx(float(unit(1, 1, 0.2) @ TEXT))
        assert "neither" not in [e.id for e in found]


def test_rrf_is_scale_free_where_a_weighted_sum_is_not() -> None:
    """Image-to-caption similarities run lower than text-to-caption ones; RRF does not care."""
    image = np.array([0.30, 0.20, 0.25])
    text = np.array([0.52, 0.55, 0.50])
    stretched = text * 10
    assert int(np.argmax(fuse(image, text, "rrf", 0.5))) == 0
    assert int(np.argmax(fuse(image, stretched, "rrf", 0.5))) == 0
    assert int(np.argmax(fuse(image, text, "weighted", 0.5))) == 0
    assert int(np.argmax(fuse(image, stretched, "weighted", 0.5))) == 1


def test_a_record_one_query_missed_ranks_below_what_it_found() -> None:
    image = np.array([0.9, 0.8, np.nan])
    text = np.array([np.nan, 0.7, 0.6])
    assert list(np.argsort(-fuse(image, text, "rrf", 0.5))) == [1, 0, 2]


def test_one_query_alone_ranks_by_its_similarity(tmp_path: Path) -> None:
    settings = offline_settings(tmp_path)
    synthetic_index(settings, {
        "a": (unit(1, 0.2), meta("a", body="G2 | A2 B2 c2 |]")),
        "b": (unit(0.2, 1), meta("b", body="A2 | B2 c2 d2 |]")),
    })
    retriever = Retriever(Space(), settings=settings)
    assert [e.id for e in retriever.search(None, TEXT, k=2)] == ["b", "a"]
    assert retriever.search(None, TEXT, k=1)[0].image_similarity is None


def test_filters_apply_after_fetching_and_fetch_more_when_needed(tmp_path: Path) -> None:
    settings = offline_settings(tmp_path, rag_candidates=2)
    rows = {f"r{i}": (unit(1, 1 - i / 20, i / 20), meta(f"r{i}", body=f"G{i} | A2 B2 c2 |]"))
            for i in range(12)}
    rows["jig"] = (unit(0, 0, 1), meta("jig", meter="6/8", body="A | B2 c d2 e |]"))
    synthetic_index(settings, rows)
    found = Retriever(Space(), settings=settings).search(IMAGE, TEXT, k=3,
                                                         filters={"meter": "6/8"})
    assert [e.id for e in found] == ["jig"]


def test_the_same_tune_stored_twice_is_returned_once(tmp_path: Path) -> None:
    settings = offline_settings(tmp_path)
    synthetic_index(settings, {
        "oneill": (unit(1, 1), meta("The Kesh", body="G2 | A2 B2 c2 |]")),
        "ryan": (unit(0.6, 0.6, 0.5), meta("Kesh Jig", body="G2 |  A2 B2 c2 |]")),
        "other": (unit(0.3, 0.3, 1), meta("Other", body="c2 | d2 e2 f2 |]")),
    })
    found = Retriever(Space(), settings=settings).search(IMAGE, TEXT, k=3)
    assert [e.id for e in found] == ["oneill", "other"]


def test_trim_keeps_the_header_and_whole_bars() -> None:
    body = "\n".join("G2 B2 d2 | e2 d2 B2 | A2 B2 c2 | d6 |" for _ in range(40))
    tune = TUNE.format(title="Long", meter="3/4", body=body)
    trimmed, was_trimmed = trim_abc(tune, token_budget=60)
    assert was_trimmed
    assert trimmed.startswith("X:1\nT:Long\nM:3/4\nL:1/8\nK:G\n")
    assert len(trimmed) <= 60 * 2.5 + len("% … trimmed to fit the prompt\n")
    music = [line for line in trimmed.splitlines()[5:] if not line.startswith("%")]
    assert all(line.rstrip().endswith("|") for line in music)
    assert trim_abc(tune, token_budget=10_000) == (tune, False)


def test_no_index_says_how_to_build_it(tmp_path: Path) -> None:
    with pytest.raises(NoIndex, match="img2music index build --source music21"):
        Retriever(Space(), settings=offline_settings(tmp_path))


def test_a_collection_from_another_embedder_is_refused(tmp_path: Path) -> None:
    settings = offline_settings(tmp_path)
    collection = open_collection("music21", "model-a", settings=settings, create=True)
    assert collection is not None
    collection.modify(metadata={"source": "music21", "embedder": "model-b"})
    with pytest.raises(IndexMismatch, match="built with the embedder 'model-b', not 'model-a'"):
        open_collection("music21", "model-a", settings=settings)
    assert collection_name("music21", "model-a") != collection_name("music21", "model-b")


def test_build_query_and_rerun_on_real_corpus_tunes(tmp_path: Path) -> None:
    settings = offline_settings(tmp_path)
    embedder = load_embedder(settings)
    report = build_index("music21", embedder, limit=300, settings=settings)
    assert report.added == 300
    again = build_index("music21", embedder, limit=300, settings=settings)
    assert (again.added, again.already_there) == (0, 300)
    (info,) = index_info(settings)
    assert (info.source, info.embedder, info.records) == ("music21", embedder.name, 300)
    found = Retriever(embedder, settings=settings).retrieve(
        description="a lively Irish jig in D major", k=5)
    assert len(found) == 5
    assert all(check_abc(example.abc).tunes == 1 for example in found)
    assert all(example.text_similarity is not None for example in found)


def _count(settings: Settings, name: str) -> int:
    collection = open_collection("music21", name, settings=settings)
    return 0 if collection is None else collection.count()


KILL_AFTER_BATCHES = 2
KILLED_BATCH = 16  # small batches: the property is the same at any size, and quicker to reach
# The build killed (SIGKILL, no cleanup) right after its second batch is committed, saying how
# many records it had committed by then.
KILLED_BUILD = """
import os, signal, sys
from img2music.tools.retrieval import index
from img2music.tools.retrieval.embedder import load_embedder

def after_batch(report):
    after_batch.batches += 1
    if after_batch.batches == {batches}:
        print(report.added, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

after_batch.batches = 0
index.INGEST_BATCH = {batch}
index.build_index("music21", load_embedder(), limit={limit}, on_batch=after_batch)
"""


@pytest.fixture
def index_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """`img2music` in this process, with the tiny CLIP and this test's data folder: the commands'
    own code, without starting Python, torch and Chroma again for each (the installed entry
    point is tested in test_cli.py)."""
    monkeypatch.setenv("IMG2MUSIC_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("IMG2MUSIC_CLIP_MODEL", "img2music-tiny")
    monkeypatch.setenv("IMG2MUSIC_CLIP_PRETRAINED", "none")
    monkeypatch.setattr(console, "width", 200)
    get_settings.cache_clear()

    def invoke(*arguments: str) -> Result:
        return CliRunner().invoke(app, list(arguments))

    return invoke


def test_an_interrupted_build_loses_nothing_and_resumes(
    tmp_path: Path, index_cli: Callable[..., Result]
) -> None:
    settings = offline_settings(tmp_path)
    limit = 40
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_BUILD.format(batches=KILL_AFTER_BATCHES,
                                                   batch=KILLED_BATCH, limit=limit)],
        env={**os.environ, "IMG2MUSIC_DATA_DIR": str(tmp_path),
             "IMG2MUSIC_CLIP_MODEL": "img2music-tiny", "IMG2MUSIC_CLIP_PRETRAINED": "none"},
        capture_output=True, text=True, timeout=600, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    committed = int(killed.stdout)
    assert 0 < committed <= KILL_AFTER_BATCHES * KILLED_BATCH
    stored = _count(settings, load_embedder(settings).name)
    assert stored == committed  # every committed batch survives the kill, and nothing else
    resumed = index_cli("index", "build", "--source", "music21", "--limit", str(limit))
    assert resumed.exit_code == 0, resumed.output
    match = re.search(r"(\d+) added, (\d+) already stored", resumed.stdout)
    assert match is not None, resumed.stdout
    assert (int(match.group(1)), int(match.group(2))) == (limit - stored, stored)
    info = index_cli("index", "info")
    assert re.search(rf"music21 .* {limit} ", info.stdout), info.stdout


def test_index_commands_build_inspect_and_query(
    tmp_path: Path, index_cli: Callable[..., Result]
) -> None:
    built = index_cli("index", "build", "--source", "music21", "--limit", "150")
    assert built.exit_code == 0, built.output
    assert "150 added, 0 already stored" in built.stdout
    info = index_cli("index", "info")
    assert "music21" in info.stdout and "img2music-tiny|none|ctx77" in info.stdout
    assert "150" in info.stdout
    photo = Path(__import__("matplotlib").cbook.get_sample_data("grace_hopper.jpg",
                                                                asfileobj=False))
    query = index_cli("index", "query", "a slow German ballad in a minor key",
                      "--image", str(photo), "-k", "3", "--abc")
    assert query.exit_code == 0, query.output
    assert query.stdout.count("\nX:") == 3
    filtered = index_cli("index", "query", "a song", "--filter", "meter=3/4", "-k", "2",
                         "--abc")
    assert filtered.exit_code == 0, filtered.output
    meters = re.findall(r"^M:\s*(.*)$", filtered.stdout, re.MULTILINE)
    assert meters == ["3/4", "3/4"], filtered.stdout  # two tunes, each in 3/4 by its header
    bad = index_cli("index", "query", "a song", "--image", str(tmp_path / "none.png"))
    assert bad.exit_code == 2 and "cannot read" in bad.stderr


def test_query_without_an_index_says_how_to_build_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMG2MUSIC_CLIP_MODEL", "img2music-tiny")
    monkeypatch.setenv("IMG2MUSIC_CLIP_PRETRAINED", "none")
    get_settings.cache_clear()
    result = CliRunner().invoke(app, ["index", "query", "a song"])
    assert result.exit_code == 1
    assert "img2music index build --source music21" in result.stderr


def test_midicaps_folder_ingests_and_answers_queries(tmp_path: Path) -> None:
    settings = offline_settings(tmp_path / "data", midi_to_abc_bars=8)
    embedder = load_embedder(settings)
    folder = make_midicaps_folder(tmp_path)
    report = build_index("midicaps", embedder, path=folder, settings=settings)
    assert report.added == 3
    assert sorted(s.id for s in report.skipped) == [
        "midicaps:../outside.mid", "midicaps:lmd_full/4/corrupt.mid",
        "midicaps:lmd_full/5/missing.mid", "midicaps:train.json:3", "midicaps:train.json:8",
    ]
    found = Retriever(embedder, sources=["midicaps"], settings=settings).retrieve(
        description="a folk jig", k=3)
    # The drum entry is the jig once its drums are dropped: the same tune is returned once.
    captions = [e.caption for e in found]
    assert len(captions) == 2
    assert "A gentle classical duet for flute and bass." in captions
    assert captions[0 if "jig" in captions[0] else 1] in {
        "A cheerful folk jig in D major.", "A folk jig with a steady kick drum."}
    assert all(check_abc(e.abc).ok for e in found)


def test_ensure_index_builds_once_and_finishes_a_partial_build(tmp_path: Path) -> None:
    settings = offline_settings(tmp_path / "data")
    embedder = load_embedder(settings)
    folder = tmp_path / "tunes"
    folder.mkdir()
    tunes = [t for _, t in zip(range(40), iter_corpus_tunes(("oneills1850",)), strict=False)]
    (folder / "oneill.abc").write_text("\n".join(t.text for t in tunes), encoding="utf-8")
    partial = build_index("abc-dir", embedder, path=folder, limit=10, settings=settings)
    assert partial.added == 10
    finished = ensure_index("abc-dir", embedder, path=folder, settings=settings)
    assert finished is not None and finished.already_there == 10 and finished.added > 0
    assert ensure_index("abc-dir", embedder, path=folder, settings=settings) is None
