"""`img2music compose`'s options reach the run, and usage errors exit 2 before anything runs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from img2music.cli.main import app
from img2music.settings import get_settings
from tests.openai_server import ScriptedServer, last_user_text, scripted_server
from tests.test_compose_cli import PHOTO
from tests.test_graph import BROKEN, DESCRIPTION, REFINED, TUNE, answer


def respond(body: dict[str, Any]) -> str:
    """A description, a broken tune while the checker's errors come back, then a valid one."""
    text = last_user_text(body)
    if "Describe this image" in text:
        return DESCRIPTION
    if "Metrics of your tune" in text:
        return answer(REFINED)
    if "Compose an original piece" in text:
        return answer(BROKEN)
    return answer(TUNE)


@pytest.fixture
def vlm(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedServer]:
    with scripted_server(respond) as server:
        monkeypatch.setenv("IMG2MUSIC_VLM_BASE_URL", server.url)
        monkeypatch.setenv("IMG2MUSIC_VLM_MODEL", server.model)
        monkeypatch.setenv("IMG2MUSIC_VLM_RETRIES", "0")
        get_settings.cache_clear()
        yield server


def compose(tmp_path: Path, *options: str) -> tuple[Result, dict[str, Any] | None]:
    """One run on the photo without retrieval or a picture explanation; its report if any."""
    result = CliRunner().invoke(app, ["compose", str(PHOTO), "--out", str(tmp_path / "out"),
                                      "--no-rag", "--explain", "none", *options])
    report = tmp_path / "out" / "grace_hopper" / "report.json"
    return result, json.loads(report.read_text()) if report.exists() else None


def kinds(report: dict[str, Any] | None) -> list[str]:
    assert report is not None
    return [attempt["kind"] for attempt in report["attempts"]]


def test_repairs_and_refine_rounds_set_the_loops(tmp_path: Path, vlm: ScriptedServer) -> None:
    result, report = compose(tmp_path, "--max-repairs", "1", "--refine-rounds", "2")
    assert result.exit_code == 0, result.output
    assert kinds(report) == ["compose", "repair", "refine", "refine"]
    assert report is not None and report["settings"]["max_repairs"] == 1
    assert report["settings"]["refine_rounds"] == 2
    assert len(vlm.requests) == 1 + 4  # describe, then one call per attempt


def test_no_repairs_leaves_a_broken_tune_undelivered_with_exit_1(
    tmp_path: Path, vlm: ScriptedServer
) -> None:
    result, report = compose(tmp_path, "--max-repairs", "0")
    assert result.exit_code == 1, result.output
    assert kinds(report) == ["compose"]
    assert "no valid tune within the limits" in result.stderr
    assert not (tmp_path / "out" / "grace_hopper" / "tune.abc").exists()


def test_no_refine_stops_at_the_first_valid_tune(tmp_path: Path, vlm: ScriptedServer) -> None:
    result, report = compose(tmp_path, "--no-refine", "--refine-rounds", "3")
    assert result.exit_code == 0, result.output
    assert kinds(report) == ["compose", "repair"]
    assert report is not None and report["final_abc"] == TUNE
    assert not any("Metrics of your tune" in last_user_text(body) for body in vlm.requests)


@pytest.mark.parametrize(("arguments", "message"), [
    (["--max-repairs", "11"], "Invalid value for '--max-repairs'"),
    (["--vlm-top-p", "0"], "Invalid value for '--vlm-top-p'"),
    (["--repairs", "1"], "No such option"),
    (["--refine-rounds", "-1"], "Invalid value for '--refine-rounds'"),
    (["--explain", "everything"], "Invalid value for '--explain'"),
    (["--concurrency", "0"], "Invalid value for '--concurrency'"),
    (["--frobnicate"], "No such option"),
])
def test_bad_options_exit_2_before_anything_runs(
    tmp_path: Path, vlm: ScriptedServer, arguments: list[str], message: str
) -> None:
    result = CliRunner().invoke(app, ["compose", str(PHOTO), "--out", str(tmp_path / "out"),
                                      *arguments])
    assert result.exit_code == 2
    assert message in result.stderr
    assert vlm.requests == [] and not (tmp_path / "out").exists()


def test_no_images_exit_2_naming_what_is_accepted(tmp_path: Path, vlm: ScriptedServer) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image", encoding="utf-8")
    result = CliRunner().invoke(app, ["compose", str(tmp_path / "empty"), "--out",
                                      str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "no images given (jpg, png, gif, webp, bmp, tiff)" in result.stderr
    assert vlm.requests == [] and not (tmp_path / "out").exists()
