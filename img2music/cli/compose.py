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
from img2music.settings import MAX_TAKES, get_settings
from img2music.tools.files import UniqueNames


@with_run_options
def compose_command(
    images: Annotated[list[Path], typer.Argument(help="Images, or folders of images.")],
    out: Annotated[Path | None, typer.Option(
        "--out", help="Folder for the results. Default: IMG2MUSIC_DATA_DIR/runs, where runs "
        "older than IMG2MUSIC_RUNS_MAX_AGE_DAYS, or beyond IMG2MUSIC_RUNS_MAX_BYTES in all, "
        "are deleted.")] = None,
    note: Annotated[str, typer.Option("--note", help="A line about the mood you want.")] = "",
    takes: Annotated[int, typer.Option(
        "--takes", min=1, max=MAX_TAKES, help="Candidates to compose for each image, at once: "
        "the image is described and examples retrieved once, each take has its own seed (the "
        "first is --seed's), and each writes its files in take-1/, take-2/, …; pick one with "
        "`img2music pick`.")] = 1,
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

        def show(image: str, node: str, update: object, take: int | None = None) -> None:
            step = node if take is None else f"take {take + 1}: {node}"
            progress.update(tasks[image], description=f"{Path(image).name}: {step}")

        async def one(path: Path, slots: asyncio.Semaphore) -> Composition:
            async with slots:
                result = await acompose(path, out_dir=folders[path], note=note,
                                        on_progress=show, takes=takes, **run_options)
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


def pick_command(
    run_dir: Annotated[Path, typer.Argument(help="The folder of a run of several takes.")],
    take: Annotated[int, typer.Argument(min=1, help="The take to keep: 1 is the first.")],
) -> None:
    """Record which take of a run you picked, in its report.json (`picked`)."""
    from img2music.pipeline.takes import PickRefused, pick_take

    try:
        report = pick_take(run_dir, take)
    except PickRefused as error:
        errors.print(Text(str(error)))
        raise typer.Exit(1) from None
    chosen = report["takes"][take - 1]
    console.print(Text(f"picked take {take} of {run_dir}: {run_dir / chosen['folder']}"))
