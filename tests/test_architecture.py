"""The folders show the design, and the imports keep to it: dependencies run one way (the root
modules ← tools ← graph ← pipeline ← eval and server ← CLI), each tools subpackage imports only
what its docstring allows, every module has one import path, and every package says what it is
for. Imports are read from the source with `ast`, those inside functions and `TYPE_CHECKING`
blocks too, so a lazy import cannot hide a wrong arrow."""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDER_NAMES = ("graph", "tools", "server", "prompts")  # importable only inside img2music

FOUNDATION = {"img2music.settings", "img2music.templating", "img2music.prompt_files",
              "img2music.redaction"}
TOOLS = {"img2music.tools.abc", "img2music.tools.corpus", "img2music.tools.retrieval",
         "img2music.tools.render", "img2music.tools.explain", "img2music.tools.metrics",
         "img2music.tools.programs", "img2music.tools.images", "img2music.tools.files",
         "img2music.tools.devices"}
# What each part of the package may import besides itself.
ALLOWED: dict[str, set[str]] = {
    "img2music": {"img2music.pipeline"},  # `from img2music import compose`, loaded when asked
    "img2music.settings": set(),
    "img2music.templating": set(),
    "img2music.redaction": {"img2music.settings"},
    "img2music.prompt_files": {"img2music.settings", "img2music.templating"},
    "img2music.prompts": set(),
    "img2music.tools": set(),
    "img2music.tools.files": set(),
    "img2music.tools.devices": set(),
    "img2music.tools.programs": set(),
    "img2music.tools.images": {"img2music.settings"},
    "img2music.tools.metrics": {"img2music.tools.abc", "img2music.settings",
                                "img2music.prompt_files"},
    "img2music.tools.abc": {"img2music.tools.programs", "img2music.settings"},
    "img2music.tools.corpus": {"img2music.tools.abc", "img2music.tools.programs",
                               "img2music.settings"},
    "img2music.tools.retrieval": {"img2music.tools.corpus", "img2music.tools.abc",
                                  "img2music.tools.images", "img2music.tools.devices",
                                  "img2music.settings"},
    "img2music.tools.render": {"img2music.tools.abc", "img2music.tools.programs",
                               "img2music.tools.files", "img2music.tools.images",
                               "img2music.settings"},
    "img2music.tools.explain": {"img2music.tools.abc", "img2music.tools.retrieval",
                                "img2music.tools.images", "img2music.tools.devices"},
    "img2music.graph": FOUNDATION | TOOLS,
    "img2music.pipeline": FOUNDATION | TOOLS | {"img2music.graph"},
    "img2music.eval": FOUNDATION | TOOLS | {"img2music.graph", "img2music.pipeline"},
    "img2music.server": FOUNDATION | TOOLS | {"img2music.graph", "img2music.pipeline"},
    "img2music.cli": FOUNDATION | TOOLS | {"img2music.graph", "img2music.pipeline",
                                           "img2music.eval", "img2music.server"},
}


def package_modules() -> Iterator[tuple[str, Path]]:
    """Every module of the package, by its one import name, from pyproject's folder mapping."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for package, folder in setuptools["package-dir"].items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts))
            yield name.removesuffix(".__init__"), path


def imported(source: str) -> set[str]:
    """The modules a source imports, anywhere in it (absolute imports; relative ones are
    refused: one way to name a module)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"relative import of {node.module!r}"
            names.add(node.module or "")
    return names


def part(module: str) -> str:
    """The part of the package a module belongs to: the longest name in ALLOWED it starts with."""
    matches = [name for name in ALLOWED if module == name or module.startswith(f"{name}.")]
    return max(matches, key=len)


def test_the_reader_sees_lazy_and_type_only_imports() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "import img2music.settings\n"
        "if TYPE_CHECKING:\n    from img2music.graph.state import State\n"
        "def later():\n    from img2music.server.app import app\n"
        "class A:\n    def method(self):\n        import img2music.cli.main\n"
    )
    assert imported(source) >= {"img2music.settings", "img2music.graph.state",
                                "img2music.server.app", "img2music.cli.main"}
    assert part("img2music.tools.abc.scan") == "img2music.tools.abc"
    assert part("img2music.tools") == "img2music.tools"
    assert part("img2music.server.vllm.launch") == "img2music.server"


def test_dependencies_run_one_way() -> None:
    wrong = []
    modules = dict(package_modules())
    assert len(modules) > 80  # the whole package was read
    for module, path in modules.items():
        home = part(module)
        for target in imported(path.read_text(encoding="utf-8")):
            if target.split(".")[0] != "img2music":
                continue
            there = part(target)
            if there != home and there not in ALLOWED[home]:
                wrong.append(f"{path.relative_to(ROOT)}: {module} imports {target}")
    assert wrong == []


def test_every_module_has_one_import_path() -> None:
    """The root folders are reached only as img2music.graph, img2music.tools, …, never by their
    folder names, from the package, the tests, the benchmarks or the scripts."""
    sources = [path for _, path in package_modules()]
    for folder in ("tests", "benchmarks", "scripts"):
        sources.extend((ROOT / folder).rglob("*.py"))
    wrong = [f"{path.relative_to(ROOT)}: {target}" for path in sources
             for target in imported(path.read_text(encoding="utf-8"))
             if target.split(".")[0] in FOLDER_NAMES]
    assert wrong == []
    assert [path for path in ROOT.rglob("*") if path.is_symlink() and ".venv" not in path.parts
            and ".git" not in path.parts] == []


def test_every_package_says_what_it_is_for_and_what_it_may_import() -> None:
    for module, path in package_modules():
        if path.name != "__init__.py":
            continue
        docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        assert docstring, f"{module} has no docstring"
        if module in ALLOWED:
            assert "import" in docstring.lower(), f"{module} does not say what it may import"
