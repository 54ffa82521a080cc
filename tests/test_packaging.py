"""`img2music` is the one top-level name, in the wheel and in the editable install."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GENERIC_NAMES = ("graph", "tools", "server", "prompts", "tests", "benchmarks")


def test_wheel_has_only_the_img2music_top_level(tmp_path: Path) -> None:
    # Built from a copy: setuptools writes build/ and *.egg-info/ next to the sources it builds.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache",
        ".langgraph_api"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
         "--quiet", "--wheel-dir", str(tmp_path)],
        check=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("img2music-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/", 1)[0] for name in names}
    assert top_level == {"img2music", wheel.name.split("-py3")[0] + ".dist-info"}
    for expected in ("img2music/tools/check.py", "img2music/graph/__init__.py",
                     "img2music/server/__init__.py", "img2music/prompts/metrics.toml",
                     "img2music/prompts/metric_feedback.j2", "img2music/py.typed",
                     "img2music/eval/runner.py", "img2music/prompts/judge_questions.toml",
                     "img2music/prompts/judge.j2", "img2music/prompts/caption_tune.j2",
                     "img2music/server/page/index.html", "img2music/server/page/page.js",
                     "img2music/server/page/page.css", "img2music/server/page/icon.svg",
                     "img2music/templates/report.html.j2", "img2music/templates/report.css",
                     "img2music/server/langgraph_auth.py"):
        assert expected in names


def test_editable_install_exposes_only_img2music(tmp_path: Path) -> None:
    probe = (
        "import importlib, img2music.tools.check as check\n"
        "print(check.__file__)\n"
        f"for name in {GENERIC_NAMES!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError:\n"
        "        continue\n"
        "    raise SystemExit(f'{name} is importable as a top-level module')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert Path(result.stdout.strip()).resolve() == ROOT / "tools" / "check.py"
