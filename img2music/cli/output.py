"""What every command shares: where it prints, its usage exit status, counted nouns, the images
it is given, and the progress display."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

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
