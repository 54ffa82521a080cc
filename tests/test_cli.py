"""`img2music check` and `img2music render` as a user runs them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from img2music.cli.main import app
from img2music.tools.corpus.music21_corpus import iter_corpus_tunes
from tests.needs import needs_programs, needs_soundfont

runner = CliRunner()

TUNE = """X:1
T:Harbour at dusk
M:6/8
L:1/8
Q:3/8=60
K:Am
E | A2 B c2 d | e3 c2 A | B2 c d2 B | A3 z2 :|
"""


@pytest.fixture
def tune_file(tmp_path: Path) -> Path:
    path = tmp_path / "tune.abc"
    path.write_text(TUNE, encoding="utf-8")
    return path


def test_check_valid_tune_as_json(tune_file: Path) -> None:
    result = runner.invoke(app, ["check", str(tune_file), "--json", "--metrics"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["ok"] is True
    assert (payload["tunes"], payload["voices"], payload["bars"]) == (1, 1, 5)
    assert payload["errors"] == []
    assert set(payload["metrics"]) >= {
        "pitch_range", "n_pitches_used", "n_pitch_classes_used", "polyphony",
        "scale_consistency", "pitch_entropy", "pitch_class_entropy", "empty_beat_rate",
    }
    assert payload["metrics"]["pitch_range"] == 12  # E4 to E5


def test_check_invalid_tune_exits_1_with_the_place(tmp_path: Path) -> None:
    path = tmp_path / "broken.abc"
    path.write_text(TUNE.replace("e3 c2 A", "e3 [c2 A"), encoding="utf-8")
    result = runner.invoke(app, ["check", str(path), "--json", "--metrics"])
    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    assert payload["ok"] is False
    assert payload["errors"][0]["severity"] == "error"
    assert payload["errors"][0]["line"] == 7
    assert payload["errors"][0]["col"] == 20  # where the chord opens
    assert "a chord opened with [ is not closed" in payload["errors"][0]["message"]
    assert payload["metrics"] == {}


def test_check_lists_faults_as_warnings_and_exits_0_unless_strict(tmp_path: Path) -> None:
    path = tmp_path / "faulty.abc"
    path.write_text(TUNE.replace("e3 c2 A", "e3 c2 A B"), encoding="utf-8")
    result = runner.invoke(app, ["check", str(path), "--json", "--metrics"])
    assert result.exit_code == 0
    payload = json.loads(result.stdout)
    assert (payload["ok"], payload["clean"], payload["errors"]) == (True, False, [])
    fault = payload["faults"][0]
    assert (fault["severity"], fault["line"], fault["col"]) == ("fault", 7, 17)  # the long bar
    assert "too long" in fault["message"] and payload["fault_count"] == 1
    assert payload["metrics"]["pitch_range"] == 12  # it plays, so it is measured
    human = runner.invoke(app, ["check", str(path)])
    assert human.exit_code == 0
    assert "valid, 1 warning" in human.stdout
    assert "warning line 7, col 17: bar 3 lasts 7/8" in human.stdout
    assert runner.invoke(app, ["check", "--strict", str(path)]).exit_code == 1
    assert runner.invoke(app, ["check", "--strict", "--json", str(path)]).exit_code == 1


def test_check_human_output(tune_file: Path) -> None:
    result = runner.invoke(app, ["check", str(tune_file), "--metrics"])
    assert result.exit_code == 0
    assert "valid" in result.stdout and "5 bars" in result.stdout
    assert "Pitch range 12" in result.stdout


def test_check_measures_only_when_asked(tune_file: Path) -> None:
    human = runner.invoke(app, ["check", str(tune_file)])
    assert human.exit_code == 0 and "5 bars" in human.stdout
    assert "metrics" not in human.stdout
    payload = json.loads(runner.invoke(app, ["check", str(tune_file), "--json"]).stdout)
    assert payload["ok"] is True and payload["metrics"] is None  # not measured, not unmeasurable


HEAVY_LIBRARIES = ("torch", "muspy", "open_clip", "chromadb", "transformers", "matplotlib",
                   "music21", "langgraph", "langchain_core", "scipy", "numpy", "fastapi",
                   "uvicorn", "PIL")
LOADED_AFTER = """
import sys
from img2music.cli.main import app
try:
    app({arguments!r})
except SystemExit:
    pass
print("loaded:", *sorted({{name.split(".")[0] for name in sys.modules}} & {heavy!r}))
"""


def heavy_libraries_loaded(*arguments: str) -> list[str]:
    """The heavy libraries a fresh process has imported once the command has run."""
    result = subprocess.run(
        [sys.executable, "-c", LOADED_AFTER.format(arguments=list(arguments),
                                                    heavy=set(HEAVY_LIBRARIES))],
        capture_output=True, text=True, timeout=120, check=False)
    line = result.stdout.splitlines()[-1]
    assert line.startswith("loaded:"), result.stdout + result.stderr
    return line.split()[1:]


@needs_programs("abc2midi")
def test_the_command_line_loads_heavy_libraries_only_for_the_commands_that_need_them(
    tune_file: Path,
) -> None:
    assert heavy_libraries_loaded("--help") == []
    assert heavy_libraries_loaded("check", str(tune_file)) == []
    assert heavy_libraries_loaded("check", "--json", str(tune_file)) == []
    assert "muspy" in heavy_libraries_loaded("check", "--metrics", str(tune_file))


def test_check_missing_file_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["check", str(tmp_path / "nope.abc")])
    assert result.exit_code == 2
    assert "cannot read" in result.stderr


def test_check_unknown_option_exits_2(tune_file: Path) -> None:
    assert runner.invoke(app, ["check", str(tune_file), "--frobnicate"]).exit_code == 2


def test_check_real_corpus_file_with_many_tunes(tmp_path: Path) -> None:
    tune = next(iter_corpus_tunes(("oneills1850",)))
    path = tmp_path / "oneill.abc"
    path.write_bytes(tune.path.read_bytes())
    result = runner.invoke(app, ["check", str(path), "--json"])
    payload = json.loads(result.stdout)
    assert payload["tunes"] == 50
    assert result.exit_code == (0 if payload["ok"] else 1)


@needs_programs("fluidsynth", "abcm2ps")
@needs_soundfont
def test_render_writes_every_file(tune_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["render", str(tune_file), "--out", str(out)])
    assert result.exit_code == 0, result.output
    written = {path.name for path in out.iterdir()}
    assert written == {"tune.mid", "tune.wav", "score.svg", "pianoroll.png"}
    assert (out / "tune.mid").read_bytes().startswith(b"MThd")


def test_render_only_what_is_asked(tune_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["render", str(tune_file), "--out", str(out), "--midi"])
    assert result.exit_code == 0, result.output
    assert {path.name for path in out.iterdir()} == {"tune.mid"}


def test_render_invalid_tune_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "broken.abc"
    path.write_text(TUNE.replace("K:Am\n", ""), encoding="utf-8")
    result = runner.invoke(app, ["render", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "no K: (key) field" in result.stderr


def test_installed_entry_point(tune_file: Path) -> None:
    command = Path(sys.executable).with_name("img2music")
    result = subprocess.run([str(command), "check", str(tune_file), "--json"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["ok"] is True


@needs_programs("abc2midi")
def test_render_exits_1_naming_a_missing_program_and_writes_the_rest(
    tune_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    programs = tmp_path / "bin"  # abc2midi alone: no fluidsynth, no abcm2ps
    programs.mkdir()
    (programs / "abc2midi").symlink_to(str(shutil.which("abc2midi")))
    monkeypatch.setenv("PATH", str(programs))
    out = tmp_path / "out"
    result = runner.invoke(app, ["render", str(tune_file), "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "wav: fluidsynth is not installed (Debian package: fluidsynth)" in result.stderr
    assert "svg: abcm2ps is not installed (Debian package: abcm2ps)" in result.stderr
    assert {path.name for path in out.iterdir()} == {"tune.mid", "pianoroll.png"}
