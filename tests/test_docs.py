"""The documentation stays true: every relative link in README.md, CONTRIBUTING.md and docs/
reaches its file and heading, the README's picture of the graph is the graph, and the settings
reference is the one scripts/settings_doc.py makes from `Settings` today."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from itertools import pairwise
from pathlib import Path
from urllib.parse import unquote, urlsplit

from markdown_it import MarkdownIt
from markdown_it.token import Token

from img2music.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, ROOT / "CONTRIBUTING.md", *DOCS]
MARKDOWN = MarkdownIt("commonmark").enable("table")


def tokens(page: Path) -> list[Token]:
    return MARKDOWN.parse(page.read_text(encoding="utf-8"))


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as
    hyphens, and `-1`, `-2`, … after a repeated one."""
    found: set[str] = set()
    seen: Counter[str] = Counter()
    stream = tokens(page)
    for opening, inline in pairwise(stream):
        if opening.type != "heading_open":
            continue
        text = "".join(child.content for child in inline.children or []
                       if child.type in ("text", "code_inline"))
        slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        found.add(f"{slug}-{seen[slug]}" if seen[slug] else slug)
        seen[slug] += 1
    return found


def links(page: Path) -> list[str]:
    """Every link and image target of a page, code blocks left out."""
    targets = []
    for token in tokens(page):
        for child in token.children or []:
            target = child.attrs.get("href") or child.attrs.get("src")
            if child.type in ("link_open", "image") and isinstance(target, str):
                targets.append(target)
    return targets


def dead_links(page: Path) -> list[str]:
    """The page's relative links whose file, or heading in that file, does not exist."""
    dead = []
    for target in links(page):
        parts = urlsplit(target)
        if parts.scheme or parts.netloc:
            continue  # a web address: not ours to check offline
        path = (page.parent / unquote(parts.path)).resolve() if parts.path else page
        if parts.path.startswith("/") or not path.exists():
            dead.append(f"{page.name}: {target} (no such file)")
        elif parts.fragment and (path.suffix != ".md"
                                 or unquote(parts.fragment) not in anchors(path)):
            dead.append(f"{page.name}: {target} (no such heading)")
    return dead


def test_the_link_check_finds_missing_files_and_headings(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## What is ready: `img2music doctor`\n"
                                       "## Twice\n## Twice\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n[ok](other.md) [ok](other.md#what-is-ready-img2music-doctor) "
        "[ok](other.md#twice-1) [ok](#page) [web](https://example.org/x.md#y)\n\n"
        "| a | b |\n|---|---|\n| [gone](missing.md) | [gone](other.md#twice-2) |\n\n"
        "![gone](img/none.png) [gone](#nowhere)\n\n```\n[not a link](nothing.md)\n```\n",
        encoding="utf-8")
    assert dead_links(page) == [
        "page.md: missing.md (no such file)",
        "page.md: other.md#twice-2 (no such heading)",
        "page.md: img/none.png (no such file)",
        "page.md: #nowhere (no such heading)",
    ]


def test_every_relative_link_in_the_docs_resolves() -> None:
    assert len(DOCS) >= 6 and (ROOT / "CONTRIBUTING.md").is_file()
    assert [dead for page in PAGES for dead in dead_links(page)] == []


def test_the_readme_leads_to_every_page_of_the_docs() -> None:
    linked = {(README.parent / urlsplit(target).path).resolve() for target in links(README)
              if not urlsplit(target).scheme}
    assert [page.name for page in DOCS if page.resolve() not in linked] == []


def pictured_edges(page: Path) -> set[tuple[str, str, bool]]:
    """The edges of the page's one mermaid picture: (source, target, conditional)."""
    blocks = [token.content for token in tokens(page)
              if token.type == "fence" and token.info.strip() == "mermaid"]
    assert len(blocks) == 1
    return {(source, target, arrow == "-.->") for source, arrow, target in
            re.findall(r"^\s*(\w+) (-->|-\.->) (\w+);?$", blocks[0], re.MULTILINE)}


def test_the_readme_pictures_the_graph_as_it_is() -> None:
    from img2music.graph.graph import graph

    edges = {(edge.source, edge.target, edge.conditional) for edge in graph.get_graph().edges}
    assert pictured_edges(README) == edges


def test_the_serving_page_pictures_the_takes_graph_as_it_is() -> None:
    from img2music.graph.graph import takes_graph

    edges = {(edge.source, edge.target, edge.conditional)
             for edge in takes_graph.get_graph().edges}
    assert pictured_edges(ROOT / "docs" / "serving.md") == edges


def run_generator(script: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(script), *arguments], capture_output=True,
                          text=True, timeout=120, check=False)


def test_the_settings_reference_is_current() -> None:
    result = run_generator(ROOT / "scripts" / "settings_doc.py", "--check")
    assert result.returncode == 0, result.stderr


def test_the_settings_reference_names_and_describes_every_setting() -> None:
    page = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    rows = [line for line in page.splitlines() if line.startswith("| `IMG2MUSIC_")]
    assert len(rows) == len(Settings.model_fields)
    for name, field in Settings.model_fields.items():
        row = next((row for row in rows if row.startswith(f"| `IMG2MUSIC_{name.upper()}` |")), "")
        assert " ".join((field.description or "").split())[:40] in row, name


def test_a_stale_settings_reference_fails_the_check_until_it_is_made_again(
    tmp_path: Path,
) -> None:
    script = tmp_path / "scripts" / "settings_doc.py"
    script.parent.mkdir()
    shutil.copy(ROOT / "scripts" / "settings_doc.py", script)
    page = tmp_path / "docs" / "settings.md"
    page.parent.mkdir()
    page.write_text((ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
                    .replace("`img2music.rag_k` | integer (≥ 0, ≤ 20) | `4`",
                             "`img2music.rag_k` | integer (≥ 0, ≤ 20) | `5`"), encoding="utf-8")

    stale = run_generator(script, "--check")
    assert stale.returncode == 1
    assert "docs/settings.md is stale: run .venv/bin/python scripts/settings_doc.py" in stale.stderr

    assert run_generator(script).returncode == 0
    assert page.read_text(encoding="utf-8") == (ROOT / "docs" / "settings.md").read_text(
        encoding="utf-8")
    assert run_generator(script, "--check").returncode == 0
