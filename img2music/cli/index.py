"""`img2music index`: build, inspect and query the music memory used for retrieval."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text

from img2music.cli.output import EXIT_USAGE, build_bar, console, errors
from img2music.redaction import redact_url
from img2music.settings import Fusion, Settings, get_settings
from img2music.tools.corpus.records import SourceName

if TYPE_CHECKING:
    from img2music.tools.retrieval.embedder import Embedder

BUILDING = ("Retrieval searches the {source} corpus, and its index for CLIP {model} "
            "({weights}) is not built yet: building it now, before the first run. This happens "
            "once: the index is kept in {folder}, and later runs use it at once.")

app = typer.Typer(help="Build, inspect and query the music memory used for retrieval.",
                  no_args_is_help=True)


@app.command("build")
def index_build(
    source: Annotated[SourceName, typer.Option("--source", help="Where the tunes come from.")] = (
        "music21"
    ),
    path: Annotated[Path | None, typer.Option("--path", help="The folder, for midicaps and "
                                              "abc-dir.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Stop after N tunes.")] = None,
) -> None:
    """Embed a source's tunes into the index; a rerun adds only what is missing."""
    from img2music.tools.retrieval.index import build_index

    if source != "music21" and path is None:
        errors.print(f"[red]error:[/red] --source {source} needs --path FOLDER")
        raise typer.Exit(EXIT_USAGE)
    embedder = load_embedder_or_exit()
    with build_bar(f"indexing {source}", transient=True) as show:
        report = build_index(source, embedder, path=path, limit=limit, on_batch=show)
    console.print(
        f"{report.collection}: {report.added} added, {report.already_there} already stored, "
        f"{len(report.skipped)} skipped, in {report.seconds:.1f} s", highlight=False)
    for skipped in report.skipped[:5]:
        console.print(Text(f"  skipped {skipped.id}: {skipped.reason}"))
    if len(report.skipped) > 5:
        console.print(f"  … and {len(report.skipped) - 5} more", highlight=False)


@app.command("info")
def index_info_command() -> None:
    """List the collections in the index folder and the embedder now configured."""
    from img2music.tools.retrieval.index import index_info

    settings = get_settings()
    table = Table("collection", "source", "embedder", "tunes", title=str(settings.index_dir))
    for info in index_info(settings):
        table.add_row(info.name, info.source, info.embedder, str(info.records))
    console.print(table)
    positions = settings.clip_context_length or "model's own"
    console.print(f"configured: IMG2MUSIC_CLIP_MODEL={settings.clip_model}, "
                  f"IMG2MUSIC_CLIP_PRETRAINED={settings.clip_pretrained}, text positions "
                  f"{positions}; retrieval searches {settings.rag_sources}", highlight=False)


@app.command("query")
def index_query(
    text: Annotated[str | None, typer.Argument(help="A description to match.")] = None,
    image: Annotated[Path | None, typer.Option("--image", help="An image to match.")] = None,
    k: Annotated[int | None, typer.Option("-k", min=1, max=50, help="How many tunes.")] = None,
    fusion: Annotated[Fusion | None, typer.Option("--fusion", help="rrf or weighted.")] = None,
    where: Annotated[list[str] | None, typer.Option(
        "--filter", help="FIELD=TEXT, e.g. meter=6/8 or key=minor; repeatable.")] = None,
    show_abc: Annotated[bool, typer.Option("--abc", help="Print each tune's ABC.")] = False,
) -> None:
    """Find the tunes whose captions best match a description, an image, or both."""
    from img2music.tools.images import BadImage, open_image
    from img2music.tools.retrieval.retriever import NoIndex, Retriever, shown_similarity

    if text is None and image is None:
        errors.print("[red]error:[/red] give a description, --image, or both")
        raise typer.Exit(EXIT_USAGE)
    filters = _parse_filters(where or [])
    try:
        picture = open_image(image) if image is not None else None
        retriever = Retriever(load_embedder_or_exit())
    except BadImage as error:
        errors.print(Text(f"error: {image}: {error}"))
        raise typer.Exit(EXIT_USAGE) from error
    except NoIndex as error:
        errors.print(Text(f"error: {error}"))
        raise typer.Exit(1) from error
    examples = retriever.retrieve(image=picture, description=text, k=k, fusion=fusion,
                                  filters=filters)
    table = Table("#", "score", "image", "text", "tune", "caption", show_lines=False)
    for rank, example in enumerate(examples, start=1):
        table.add_row(
            str(rank), f"{example.score:.4f}", shown_similarity(example.image_similarity),
            shown_similarity(example.text_similarity),
            Text(str(example.metadata.get("title") or example.id)), Text(example.caption),
        )
    console.print(table)
    if show_abc:
        for example in examples:
            console.print(Text(f"\n% {example.id}\n{example.abc}"))
    if not examples:
        raise typer.Exit(1)


def _parse_filters(pairs: list[str]) -> dict[str, str]:
    filters = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name or not value:
            errors.print(Text(f"error: --filter {pair!r} is not FIELD=TEXT"))
            raise typer.Exit(EXIT_USAGE)
        filters[name.strip()] = value.strip()
    return filters


def build_first_use_index(settings: Settings) -> None:
    """The index runs search (`compose`, `eval`), built before the first run, with a bar, when
    it is not complete: inside a run it would be built too, but under a display that shows
    only "retrieve" for minutes. When CLIP cannot be loaded, the runs say why, each in its
    line."""
    from img2music.pipeline.index_build import IndexBuild
    from img2music.tools.retrieval.embedder import EmbedderUnavailable

    build = IndexBuild(settings)
    try:
        if not build.needed():
            return
    except EmbedderUnavailable:
        return
    console.print(Text(BUILDING.format(source=build.source, model=settings.clip_model,
                                       weights=settings.clip_pretrained,
                                       folder=redact_url(settings.chroma_url) if
                                       settings.chroma_url else settings.index_dir)))
    try:
        with build_bar(f"indexing {build.source}") as show:
            build.after_batch = show
            build.run()
    except Exception as error:
        errors.print(Text(f"error: the {build.source} index could not be built: {build.error}"))
        raise typer.Exit(1) from error


def load_embedder_or_exit() -> Embedder:
    from img2music.tools.retrieval.embedder import EmbedderUnavailable, load_embedder

    try:
        return load_embedder()
    except EmbedderUnavailable as error:
        errors.print(Text(f"error: {error}"))
        raise typer.Exit(1) from error
