"""`img2music compose`: music for each image, several at once, with a live line per image."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from img2music.cli.index import build_first_use_index
from img2music.cli.output import console, count, errors, image_paths, live_progress
from img2music.cli.run_options import with_run_options
from img2music.settings import get_settings
from img2music.tools.files import UniqueNames


@with_run_options
def compose_command(
    images: Annotated[list[Path], typer.Argument(help="Images, or folders of images.")],
    out: Annotated[Path | None, typer.Option(
        "--out", help="Folder for the results. Default: IMG2MUSIC_DATA_DIR/runs, where runs "
        "older than IMG2MUSIC_RUNS_MAX_AGE_DAYS, or beyond IMG2MUSIC_RUNS_MAX_BYTES in all, "
        "are deleted.")] = None,
    note: Annotated[str, typer.Option("--note", help="A line about the mood you want.")] = "",
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, max=64)] = 4,
    *,
    run_options: dict[str, Any],
) -> None:
    """Compose music for each image: tune.abc, MIDI, audio, score, explanation and reports."""
    from img2music.pipeline.index_build import first_use_source
    from img2music.pipeline.readiness import no_model_answers
    from img2music.pipeline.retention import prune_runs, runs_root
    from img2music.pipeline.runs import Composition, acompose

    paths = image_paths(images)
    settings = get_settings()
    help_text = no_model_answers(settings)
    if help_text is not None:  # every image would fail the same way: say how to get a model
        errors.print(Text(help_text))
        raise typer.Exit(1)
    if first_use_source(settings, rag=run_options.get("rag", True),
                        rag_k=run_options.get("rag_k")) is not None:
        build_first_use_index(settings)
    folders = _output_folders(paths, out or runs_root(settings))
    results: list[Composition] = []
    with live_progress() as progress:
        tasks = {str(path): progress.add_task(f"{path.name}: waiting", total=None)
                 for path in paths}

        def show(image: str, node: str, update: object) -> None:
            progress.update(tasks[image], description=f"{Path(image).name}: {node}")

        async def one(path: Path, slots: asyncio.Semaphore) -> Composition:
            async with slots:
                result = await acompose(path, out_dir=folders[path], note=note,
                                        on_progress=show, **run_options)
            verdict = f"no tune: {result.error}" if not result.ok else (
                f"done, {count(result.fault_count, 'fault')}" if result.fault_count else "done")
            progress.update(tasks[str(path)], description=f"{path.name}: {verdict}")
            return result

        async def every() -> list[Composition]:
            slots = asyncio.Semaphore(concurrency)
            return list(await asyncio.gather(*(one(path, slots) for path in paths)))

        results = asyncio.run(every())
    if out is None:
        prune_runs(runs_root(settings), settings, keep=folders.values())
    for result in results:
        (console if result.ok else errors).print(Text(result.summary()))
    raise typer.Exit(0 if all(result.ok for result in results) else 1)


def _output_folders(paths: list[Path], out: Path) -> dict[Path, Path]:
    """One folder per image, named after it; a repeated name gets a number."""
    names = UniqueNames()
    return {path: out / names.take(path) for path in paths}
