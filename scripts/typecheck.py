"""mypy --strict over img2music, tests and benchmarks, each module under its one import name.

setuptools installs the root folders graph/, tools/, server/ and prompts/ as subpackages of
`img2music` (`[tool.setuptools.package-dir]` in pyproject.toml). mypy finds a module's name from
its folders and does not run the editable install's import hook, so it would read
`graph/nodes.py` as `graph.nodes` and could not resolve `img2music.graph.nodes`. This script
reads the same mapping, names every source file's module, and runs mypy's build on them with
the options of `[tool.mypy]`. It also refuses a package folder that pyproject.toml does not
list, which the wheel would silently leave out.

    .venv/bin/python scripts/typecheck.py
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

from mypy import build
from mypy.errors import CompileError
from mypy.main import process_options
from mypy.modulefinder import BuildSource

ROOT = Path(__file__).resolve().parent.parent
PLAIN_PACKAGES = ("tests", "benchmarks")  # imported under their folders' names


def package_sources(pyproject: dict[str, object]) -> tuple[list[BuildSource], list[str]]:
    """Every module of the installed package with its file, and the folders left unlisted."""
    setuptools = pyproject["tool"]["setuptools"]  # type: ignore[index]
    mapping: dict[str, str] = setuptools["package-dir"]
    listed: set[str] = set(setuptools["packages"])
    sources: list[BuildSource] = []
    unlisted: list[str] = []
    for package, folder in mapping.items():
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            parts = init.parent.relative_to(ROOT / folder).parts
            name = ".".join((package, *parts))
            if name not in listed:
                unlisted.append(f"{init.parent.relative_to(ROOT)} ({name})")
                continue
            sources.extend(_modules(init.parent, name))
    return sources, unlisted


def _modules(folder: Path, package: str) -> list[BuildSource]:
    return [BuildSource(str(path.relative_to(ROOT)),
                        package if path.stem == "__init__" else f"{package}.{path.stem}")
            for path in sorted(folder.glob("*.py"))]


def plain_sources() -> list[BuildSource]:
    """tests/, benchmarks/ and scripts/: modules named by their folders."""
    sources = []
    for package in PLAIN_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            sources.append(BuildSource(str(path.relative_to(ROOT)), name))
    sources.extend(BuildSource(str(path.relative_to(ROOT)), path.stem)
                   for path in sorted((ROOT / "scripts").glob("*.py")))
    return sources


def main() -> int:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    sources, unlisted = package_sources(pyproject)
    if unlisted:
        print("pyproject.toml's [tool.setuptools] packages does not list:", *unlisted,
              sep="\n  ", file=sys.stderr)
        return 1
    sources += plain_sources()
    _, options = process_options(["--config-file", str(ROOT / "pyproject.toml"),
                                  *(source.path or "" for source in sources)])
    try:
        result = build.build(sources, options)
    except CompileError as error:
        print("\n".join(error.messages), file=sys.stderr)
        return 2
    if result.errors:
        print("\n".join(result.errors))
        files = {line.split(":", 1)[0] for line in result.errors if ": error:" in line}
        count = sum(": error:" in line for line in result.errors)
        print(f"Found {count} error{'s' * (count != 1)} in {len(files)} file"
              f"{'s' * (len(files) != 1)} (checked {len(sources)} source files)")
        return 1
    print(f"Success: no issues found in {len(sources)} source files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
