"""`img2music` is the one top-level name, in the wheel and in the editable install."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GENERIC_NAMES = ("graph", "tools", "server", "prompts", "tests", "benchmarks")


def package_files() -> dict[str, Path]:
    """Every file the package is made of, by its path in the wheel, from pyproject's mapping
    of folders into `img2music` (graph/ is img2music/graph/, and so on)."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    files = {}
    for package, folder in setuptools["package-dir"].items():
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                inside = path.relative_to(ROOT / folder).as_posix()
                files[f"{package.replace('.', '/')}/{inside}"] = path
    return files


def test_wheel_has_only_the_img2music_top_level_and_every_file(tmp_path: Path) -> None:
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
    names = set(zipfile.ZipFile(wheel).namelist())
    top_level = {name.split("/", 1)[0] for name in names}
    assert top_level == {"img2music", wheel.name.split("-py3")[0] + ".dist-info"}
    expected = package_files()
    for must in ("img2music/graph/graph.py", "img2music/prompts/compose.j2",
                 "img2music/server/page/page.js", "img2music/py.typed"):
        assert must in expected  # the mapping itself is read right
    assert sorted(set(expected) - names) == []  # code, prompts, templates, page, configs


def test_editable_install_exposes_only_img2music(tmp_path: Path) -> None:
    probe = (
        "import importlib, img2music.tools.abc.check as check\n"
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
    assert Path(result.stdout.strip()).resolve() == ROOT / "tools" / "abc" / "check.py"
