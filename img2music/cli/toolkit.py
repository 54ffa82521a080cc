"""`img2music check` and `img2music render`: the toolkit on an ABC file, no model needed; `render`
also writes the editable exports (the MIDI with a track per voice, MusicXML).

`check` answers about as fast as abc2midi itself: it loads the checker alone, MusPy (about 2 s
to import) only with `--metrics`, and the renderers only for `render`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.text import Text

from img2music.cli.output import EXIT_USAGE, console, count, errors

if TYPE_CHECKING:
    from img2music.tools.abc.check import CompiledAbc
    from img2music.tools.abc.diagnostics import Diagnostic
    from img2music.tools.metrics import TuneMetrics
    from img2music.tools.render.audio import AudioFormat


def check(
    file: Annotated[Path, typer.Argument(help="An ABC file (one or more tunes).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Faults fail too, not only errors.")] = False,
    measure: Annotated[bool, typer.Option(
        "--metrics", help="Also measure the first tune: the eight MusPy metrics (MusPy takes "
        "about 2 s to load).")] = False,
) -> None:
    """Parse-check an ABC file: exit 0 when it has no errors (faults, what a musician would
    correct, are listed as warnings), 1 when it has errors (or faults, with --strict), 2 on
    usage errors."""
    compiled = _compile(file)
    result = compiled.check
    metrics: TuneMetrics | None = None
    if measure and compiled.midi is not None:
        from img2music.tools.metrics import evaluate_midi

        metrics = evaluate_midi(compiled.midi, bars=result.bars, voices=result.voices)
    if as_json:
        payload = {
            "ok": result.ok,
            "clean": result.clean,
            "errors": [_diagnostic_json(d) for d in result.errors],
            "faults": [_diagnostic_json(d) for d in result.faults],
            "error_count": result.error_count,
            "fault_count": result.fault_count,
            "tunes": result.tunes,
            "voices": result.voices,
            "bars": result.bars,
            "notes": result.notes,
            "duration_beats": result.duration_beats,
            "backend": result.backend,
            "metrics": (metrics.as_dict() if metrics else {}) if measure else None,
        }
        typer.echo(json.dumps(payload, ensure_ascii=False))
    else:
        _print_check(file, compiled, metrics)
    raise typer.Exit(0 if result.ok and (result.clean or not strict) else 1)


def render(
    file: Annotated[Path, typer.Argument(help="An ABC file; its first tune is rendered.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the files.")],
    midi: Annotated[bool, typer.Option(
        "--midi", help="Write tune.mid: a track per voice, named, with its program.")] = False,
    wav: Annotated[bool, typer.Option("--wav", help="Write tune.wav (FluidSynth).")] = False,
    svg: Annotated[bool, typer.Option("--svg", help="Write score.svg (abcm2ps).")] = False,
    png: Annotated[bool, typer.Option("--png", help="Write pianoroll.png.")] = False,
    ogg: Annotated[bool, typer.Option("--ogg", help="Also write tune.ogg.")] = False,
    mp3: Annotated[bool, typer.Option("--mp3", help="Also write tune.mp3.")] = False,
    musicxml: Annotated[bool, typer.Option(
        "--musicxml", help="Write tune.musicxml (music21), for MuseScore and other notation "
        "programs.")] = False,
) -> None:
    """Write MIDI, audio, score and piano roll (all four when none is named), and MusicXML when
    asked."""
    from img2music.tools.abc.check import decode_abc
    from img2music.tools.render.tune import render_all

    everything = not (midi or wav or svg or png or musicxml)
    text, _ = decode_abc(_read_abc(file))
    try:
        out.mkdir(parents=True, exist_ok=True)
        report = render_all(
            text, out,
            midi=midi or everything, wav=wav or everything or ogg or mp3,
            svg=svg or everything, png=png or everything, musicxml=musicxml,
            audio_formats=_audio_formats(ogg=ogg, mp3=mp3),
        )
    except OSError as error:
        errors.print(f"[red]error:[/red] cannot write to {out}: {error.strerror or error}")
        raise typer.Exit(EXIT_USAGE) from error
    except ValueError as error:
        errors.print(f"[red]error:[/red] {escape(str(error))}")
        raise typer.Exit(1) from error
    for kind, path in report.files.items():
        console.print(f"{kind}: {path}", highlight=False)
    for problem in report.problems:
        errors.print(f"[yellow]not written:[/yellow] {escape(problem)}", highlight=False)
    raise typer.Exit(1 if report.problems else 0)


def _read_abc(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        errors.print(f"[red]error:[/red] cannot read {path}: {error.strerror or error}")
        raise typer.Exit(EXIT_USAGE) from error


def _compile(path: Path) -> CompiledAbc:
    from img2music.tools.abc.check import compile_abc
    from img2music.tools.programs import ProgramMissing

    try:
        return compile_abc(_read_abc(path))
    except ProgramMissing as error:
        errors.print(f"[red]error:[/red] {escape(str(error))}")
        raise typer.Exit(EXIT_USAGE) from error


def _diagnostic_json(diagnostic: Diagnostic) -> dict[str, object]:
    return diagnostic.model_dump(include={"severity", "line", "col", "message", "source"})


def _print_check(file: Path, compiled: CompiledAbc, metrics: TuneMetrics | None) -> None:
    result = compiled.check
    if not result.ok:
        verdict = f"[red]not valid[/red], {count(result.error_count, 'error')}"
    elif result.fault_count:
        verdict = f"[yellow]valid[/yellow], {count(result.fault_count, 'warning')}"
    else:
        verdict = "[green]valid[/green]"
    console.print(
        f"{file}: {verdict} ({result.backend}) · {result.tunes} tune(s) · {result.voices} "
        f"voice(s) · {result.bars} bars · {result.notes} notes · {result.duration_beats:g} beats",
        highlight=False,
    )
    for diagnostic in [*result.errors, *result.faults]:
        label, colour = ("error", "red") if diagnostic.severity == "error" else ("warning",
                                                                                 "yellow")
        console.print(Text.assemble("  ", (label, colour), " ", diagnostic.one_line()))
    unlisted = result.error_count + result.fault_count - len(result.errors) - len(result.faults)
    if unlisted > 0:
        console.print(f"  … and {unlisted} more", highlight=False)
    if metrics is not None:
        console.print(f"  metrics: {metrics.summary()}", highlight=False)


def _audio_formats(*, ogg: bool, mp3: bool) -> tuple[AudioFormat, ...]:
    formats: list[AudioFormat] = []
    if ogg:
        formats.append("ogg")
    if mp3:
        formats.append("mp3")
    return tuple(formats)
