"""`img2music section` and `img2music continue`: work on a tune that exists, one model call each.

Exit status as for `compose`: 0 with a tune, 1 when the model's answer gave none that plays
(the run folder's report says why), 2 when the source cannot be worked on (no such section, no
tune, an unreadable file), said in one line before any model call.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from img2music.cli.output import EXIT_USAGE, console, errors
from img2music.settings import MAX_SEED, get_settings

MAX_BARS_ADDED = 64  # graph.nodes.MAX_BARS, the longest tune a composition asks for

Seed = Annotated[int | None, typer.Option(
    "--seed", min=0, max=MAX_SEED, help="Seed of the sampling; default: IMG2MUSIC_SEED, else a "
    "new one, named in the report.")]
Note = Annotated[str, typer.Option("--note", help="A line about what you want.")]


def section_command(
    run: Annotated[Path, typer.Argument(help="A finished run's folder (with report.json).")],
    section: Annotated[str, typer.Option("--section", help="The section's name, as in its "
                                         "`% [name]` line (e.g. theme).")],
    note: Note = "",
    seed: Seed = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Folder for the new run. Default: beside RUN, RUN-section-NAME.")] = None,
) -> None:
    """Compose one section of a finished tune again, the rest of the tune as its context; the
    whole tune is checked again and written as a new run (the original run is not changed)."""
    from img2music.pipeline.rework import ReworkRefused, arecompose_section

    if not (run / "report.json").is_file():
        _refuse(f"{run} is not a run folder: it has no report.json")
    try:
        result = asyncio.run(arecompose_section(run, section, out_dir=out, note=note,
                                                seed=seed))
    except ReworkRefused as error:
        _refuse(str(error))
    (console if result.ok else errors).print(Text(result.summary()))
    raise typer.Exit(0 if result.ok else 1)


def continue_command(
    tune: Annotated[Path, typer.Argument(help="An ABC file, or a MIDI file (.mid, .midi).")],
    bars: Annotated[int, typer.Option("--bars", min=1, max=MAX_BARS_ADDED,
                                      help="How many bars to add.")] = 8,
    note: Note = "",
    seed: Seed = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Folder for the run. Default: IMG2MUSIC_DATA_DIR/runs/NAME-continued.")
    ] = None,
) -> None:
    """Continue a tune for more bars: its bars stay as they are, the new ones follow, and the
    whole tune is checked and written as a run. MIDI is converted to ABC first (midi2abc)."""
    from img2music.pipeline.retention import runs_root
    from img2music.pipeline.rework import (
        MIDI_SUFFIXES,
        ReworkRefused,
        acontinue_tune,
        continuation_folder,
        read_tune_file,
    )

    settings = get_settings()
    try:
        abc = read_tune_file(tune, settings)
        folder = out or continuation_folder(tune, runs_root(settings))
        result = asyncio.run(acontinue_tune(
            abc, bars, name=tune.name, out_dir=folder, note=note, seed=seed, settings=settings,
            midi=tune.suffix.lower() in MIDI_SUFFIXES))
    except ReworkRefused as error:
        _refuse(str(error))
    (console if result.ok else errors).print(Text(result.summary()))
    raise typer.Exit(0 if result.ok else 1)


def _refuse(message: str) -> None:
    errors.print(Text(f"error: {message}"))
    raise typer.Exit(EXIT_USAGE)
