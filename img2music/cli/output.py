"""What every command shares: where it prints, its usage exit status, counted nouns, the images
it is given, and the progress displays (of runs, and of an index build)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

if TYPE_CHECKING:
    from img2music.tools.retrieval.index import BuildReport

console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)

EXIT_USAGE = 2


def count(number: int, noun: str) -> str:
    """"1 fault", "2 faults"."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def image_paths(arguments: list[Path]) -> list[Path]:
    """The images given, folders expanded; none at all is a usage error."""
    from img2music.tools.images import image_files

    paths = image_files(arguments)
    if not paths:
        errors.print("[red]error:[/red] no images given (jpg, png, gif, webp, bmp, tiff)")
        raise typer.Exit(EXIT_USAGE)
    return paths


def live_progress(*, counts: bool = False, transient: bool = False) -> Progress:
    """A spinner per task with its description (and `done/total` when `counts`) and time."""
    columns = [SpinnerColumn(), TextColumn("{task.description}")]
    if counts:
        columns.append(TextColumn("{task.completed}/{task.total}"))
    return Progress(*columns, TimeElapsedColumn(), console=console, transient=transient)


@contextmanager
def build_bar(description: str, *, transient: bool = False
              ) -> Iterator[Callable[[BuildReport], None]]:
    """A bar for an index build, with tunes done of all, the pace and the time left; yields the
    callback to give the build (called after each batch)."""
    from img2music.pipeline.index_build import progress_line

    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.fields[line]}"))
    with Progress(*columns, console=console, transient=transient) as progress:
        task = progress.add_task(description, total=None, line="counting the tunes")

        def show(report: BuildReport) -> None:
            progress.update(task, completed=report.done, total=report.total,
                            line=progress_line(report))

        yield show
