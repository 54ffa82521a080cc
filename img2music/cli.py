"""The `img2music` command line."""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from img2music.graph.context import ExplainMode
from img2music.settings import get_settings
from img2music.tools.check import CompiledAbc, compile_abc, decode_abc
from img2music.tools.diagnostics import Diagnostic
from img2music.tools.metrics import TuneMetrics, evaluate_midi
from img2music.tools.programs import ProgramMissing
from img2music.tools.render import AudioFormat, render_all
from img2music.tools.retrieve import Fusion
from img2music.tools.sources import SourceName

if TYPE_CHECKING:
    from img2music.tools.embedder import Embedder
    from img2music.tools.index import BuildReport

app = typer.Typer(
    help="Turn an image into music you can read, hear and understand.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)

EXIT_USAGE = 2


@app.callback()
def main() -> None:
    logging.basicConfig(level=get_settings().log_level.upper(), format="%(levelname)s %(message)s")


def _read_abc(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        errors.print(f"[red]error:[/red] cannot read {path}: {error.strerror or error}")
        raise typer.Exit(EXIT_USAGE) from error


def _compile(path: Path) -> CompiledAbc:
    try:
        return compile_abc(_read_abc(path))
    except ProgramMissing as error:
        errors.print(f"[red]error:[/red] {escape(str(error))}")
        raise typer.Exit(EXIT_USAGE) from error


def _diagnostic_json(diagnostic: Diagnostic) -> dict[str, object]:
    return diagnostic.model_dump(include={"severity", "line", "col", "message", "source"})


@app.command()
def check(
    file: Annotated[Path, typer.Argument(help="An ABC file (one or more tunes).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Faults fail too, not only errors.")] = False,
) -> None:
    """Parse-check an ABC file: exit 0 when it has no errors (faults, what a musician would
    correct, are listed as warnings), 1 when it has errors (or faults, with --strict), 2 on
    usage errors."""
    compiled = _compile(file)
    result = compiled.check
    metrics: TuneMetrics | None = None
    if compiled.midi is not None:
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
            "metrics": metrics.as_dict() if metrics else {},
        }
        typer.echo(json.dumps(payload, ensure_ascii=False))
    else:
        _print_check(file, compiled, metrics)
    raise typer.Exit(0 if result.ok and (result.clean or not strict) else 1)


def _print_check(file: Path, compiled: CompiledAbc, metrics: TuneMetrics | None) -> None:
    result = compiled.check
    if not result.ok:
        verdict = f"[red]not valid[/red], {_count(result.error_count, 'error')}"
    elif result.fault_count:
        verdict = f"[yellow]valid[/yellow], {_count(result.fault_count, 'warning')}"
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
        shown = " · ".join(
            f"{metric.name} {metric.value:.3g}" if metric.value is not None
            else f"{metric.name} undefined"
            for metric in metrics.metric_values()
        )
        console.print(f"  metrics: {shown}", highlight=False)


def _audio_formats(*, ogg: bool, mp3: bool) -> tuple[AudioFormat, ...]:
    formats: list[AudioFormat] = []
    if ogg:
        formats.append("ogg")
    if mp3:
        formats.append("mp3")
    return tuple(formats)


@app.command()
def render(
    file: Annotated[Path, typer.Argument(help="An ABC file; its first tune is rendered.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the files.")],
    midi: Annotated[bool, typer.Option("--midi", help="Write tune.mid.")] = False,
    wav: Annotated[bool, typer.Option("--wav", help="Write tune.wav (FluidSynth).")] = False,
    svg: Annotated[bool, typer.Option("--svg", help="Write score.svg (abcm2ps).")] = False,
    png: Annotated[bool, typer.Option("--png", help="Write pianoroll.png.")] = False,
    ogg: Annotated[bool, typer.Option("--ogg", help="Also write tune.ogg.")] = False,
    mp3: Annotated[bool, typer.Option("--mp3", help="Also write tune.mp3.")] = False,
) -> None:
    """Write MIDI, audio, score and piano roll (all four when none is named)."""
    everything = not (midi or wav or svg or png)
    text, _ = decode_abc(_read_abc(file))
    try:
        out.mkdir(parents=True, exist_ok=True)
        report = render_all(
            text, out,
            midi=midi or everything, wav=wav or everything or ogg or mp3,
            svg=svg or everything, png=png or everything,
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


index_app = typer.Typer(help="Build, inspect and query the music memory used for retrieval.",
                        no_args_is_help=True)
app.add_typer(index_app, name="index")


@index_app.command("build")
def index_build(
    source: Annotated[SourceName, typer.Option("--source", help="Where the tunes come from.")] = (
        "music21"
    ),
    path: Annotated[Path | None, typer.Option("--path", help="The folder, for midicaps and "
                                              "abc-dir.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Stop after N tunes.")] = None,
) -> None:
    """Embed a source's tunes into the index; a rerun adds only what is missing."""
    from img2music.tools.index import build_index

    if source != "music21" and path is None:
        errors.print(f"[red]error:[/red] --source {source} needs --path FOLDER")
        raise typer.Exit(EXIT_USAGE)
    embedder = _embedder()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task(f"indexing {source}", total=None)

        def show(report: BuildReport) -> None:
            progress.update(task, description=(
                f"indexing {source}: {report.added} added, {report.already_there} already "
                f"stored, {len(report.skipped)} skipped"))

        report = build_index(source, embedder, path=path, limit=limit, on_batch=show)
    console.print(
        f"{report.collection}: {report.added} added, {report.already_there} already stored, "
        f"{len(report.skipped)} skipped, in {report.seconds:.1f} s", highlight=False)
    for skipped in report.skipped[:5]:
        console.print(Text(f"  skipped {skipped.id}: {skipped.reason}"))
    if len(report.skipped) > 5:
        console.print(f"  … and {len(report.skipped) - 5} more", highlight=False)


@index_app.command("info")
def index_info_command() -> None:
    """List the collections in the index folder and the embedder now configured."""
    from img2music.tools.index import index_info

    settings = get_settings()
    table = Table("collection", "source", "embedder", "tunes", title=str(settings.index_dir))
    for info in index_info(settings):
        table.add_row(info.name, info.source, info.embedder, str(info.records))
    console.print(table)
    positions = settings.clip_context_length or "model's own"
    console.print(f"configured: IMG2MUSIC_CLIP_MODEL={settings.clip_model}, "
                  f"IMG2MUSIC_CLIP_PRETRAINED={settings.clip_pretrained}, text positions "
                  f"{positions}; retrieval searches {settings.rag_sources}", highlight=False)


@index_app.command("query")
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
    from img2music.tools.retrieve import NoIndex, Retriever

    if text is None and image is None:
        errors.print("[red]error:[/red] give a description, --image, or both")
        raise typer.Exit(EXIT_USAGE)
    filters = _parse_filters(where or [])
    try:
        picture = open_image(image) if image is not None else None
        retriever = Retriever(_embedder())
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
            str(rank), f"{example.score:.4f}", _similarity(example.image_similarity),
            _similarity(example.text_similarity),
            Text(str(example.metadata.get("title") or example.id)), Text(example.caption),
        )
    console.print(table)
    if show_abc:
        for example in examples:
            console.print(Text(f"\n% {example.id}\n{example.abc}"))
    if not examples:
        raise typer.Exit(1)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _similarity(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _parse_filters(pairs: list[str]) -> dict[str, str]:
    filters = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name or not value:
            errors.print(Text(f"error: --filter {pair!r} is not FIELD=TEXT"))
            raise typer.Exit(EXIT_USAGE)
        filters[name.strip()] = value.strip()
    return filters


def _embedder() -> Embedder:
    from img2music.tools.embedder import EmbedderUnavailable, load_embedder

    try:
        return load_embedder()
    except EmbedderUnavailable as error:
        errors.print(Text(f"error: {error}"))
        raise typer.Exit(1) from error


@app.command("compose")
def compose_command(
    images: Annotated[list[Path], typer.Argument(help="Images, or folders of images.")],
    out: Annotated[Path | None, typer.Option(
        "--out", help="Folder for the results. Default: IMG2MUSIC_DATA_DIR/runs, where runs "
        "older than IMG2MUSIC_RUNS_MAX_AGE_DAYS, or beyond IMG2MUSIC_RUNS_MAX_BYTES in all, "
        "are deleted.")] = None,
    note: Annotated[str, typer.Option("--note", help="A line about the mood you want.")] = "",
    k: Annotated[int | None, typer.Option("-k", min=0, max=20, help="Examples to retrieve.")] = (
        None),
    repairs: Annotated[int | None, typer.Option("--repairs", min=0, max=10)] = None,
    refine_rounds: Annotated[int | None, typer.Option("--refine-rounds", min=0, max=10)] = None,
    no_rag: Annotated[bool, typer.Option("--no-rag", help="Compose without examples.")] = False,
    no_refine: Annotated[bool, typer.Option("--no-refine", help="Skip metric feedback.")] = (
        False),
    explain: Annotated[ExplainMode | None, typer.Option("--explain")] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, max=64)] = 4,
) -> None:
    """Compose music for each image: tune.abc, MIDI, audio, score, explanation and reports."""
    from img2music.readiness import no_model_answers
    from img2music.retention import prune_runs, runs_root
    from img2music.runs import Composition, compose

    paths = _image_paths(images)
    settings = get_settings()
    help_text = no_model_answers(settings)
    if help_text is not None:  # every image would fail the same way: say how to get a model
        errors.print(Text(help_text))
        raise typer.Exit(1)
    folders = _output_folders(paths, out or runs_root(settings))
    overrides: dict[str, Any] = {"rag_k": k, "repairs": repairs, "refine_rounds": refine_rounds,
                 "rag": False if no_rag else None, "refine": False if no_refine else None,
                 "explain": explain}
    results: list[Composition] = []
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=console) as progress:
        tasks = {str(path): progress.add_task(f"{path.name}: waiting", total=None)
                 for path in paths}

        def show(image: str, node: str, update: object) -> None:
            progress.update(tasks[image], description=f"{Path(image).name}: {node}")

        def one(path: Path) -> Composition:
            result = compose(path, out_dir=folders[path], note=note, on_progress=show,
                             **overrides)
            verdict = f"no tune: {result.error}" if not result.ok else (
                f"done, {_count(result.fault_count, 'fault')}" if result.fault_count else "done")
            progress.update(tasks[str(path)], description=f"{path.name}: {verdict}")
            return result

        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            results = list(pool.map(one, paths))
    if out is None:
        prune_runs(runs_root(settings), settings, keep=folders.values())
    for result in results:
        (console if result.ok else errors).print(Text(result.summary()))
    raise typer.Exit(0 if all(result.ok for result in results) else 1)


def _image_paths(arguments: list[Path]) -> list[Path]:
    from img2music.tools.images import image_files

    paths = image_files(arguments)
    if not paths:
        errors.print("[red]error:[/red] no images given (jpg, png, gif, webp, bmp, tiff)")
        raise typer.Exit(EXIT_USAGE)
    return paths


def _output_folders(paths: list[Path], out: Path) -> dict[Path, Path]:
    """One folder per image, named after it; a repeated name gets a number."""
    folders: dict[Path, Path] = {}
    used: set[str] = set()
    for path in paths:
        name, number = path.stem, 2
        while name in used:
            name, number = f"{path.stem}-{number}", number + 1
        used.add(name)
        folders[path] = out / name
    return folders


LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@app.command()
def serve(
    host: Annotated[str, typer.Option("--host", help="Address to bind; loopback by default.")] = (
        "127.0.0.1"),
    port: Annotated[int, typer.Option("--port", min=0, max=65535,
                                      help="0 takes a free port (printed).")] = 8000,
) -> None:
    """Serve the web page, the OpenAI-compatible endpoint (model `img2music`) and runs' files."""
    import uvicorn

    from img2music.readiness import no_model_answers

    settings = get_settings()
    if host not in LOOPBACK and settings.api_key is None:
        errors.print(f"[yellow]warning:[/yellow] serving on {host} without IMG2MUSIC_API_KEY: "
                     "anyone who can reach this address can spend your model's time; requests "
                     "are answered only for loopback host names and "
                     "IMG2MUSIC_SERVER_ALLOWED_HOSTS")
    help_text = no_model_answers(settings)
    if help_text is not None:  # serve anyway: the model may come up later, /health says when
        errors.print(Text.assemble(("warning: ", "yellow"), help_text))
    from img2music.server.app import app as server  # built from these same settings

    config = uvicorn.Config(server, host=host, port=port, log_level=settings.log_level.lower(),
                            timeout_graceful_shutdown=5)
    listening = config.bind_socket()  # bound first, so the port printed is the one served
    port = listening.getsockname()[1]
    console.print(f"img2music on http://{host}:{port}/ (the page) and http://{host}:{port}/v1 "
                  f"(model img2music); runs in {settings.data_dir / 'runs'}", highlight=False)
    uvicorn.Server(config).run(sockets=[listening])


STATUS_STYLE = {"ok": "[green]ok[/green]", "warning": "[yellow]warning[/yellow]",
                "missing": "[red]missing[/red]"}


@app.command()
def doctor() -> None:
    """Check what the configured path needs, and say how to fix what is missing."""
    from img2music.readiness import doctor_checks, no_model_answers

    settings = get_settings()
    checks = doctor_checks(settings)
    table = Table(show_lines=False)
    for column in ("check", "status", "found", "fix"):
        table.add_column(column, overflow="fold")
    for check in checks:
        table.add_row(escape(check.name), STATUS_STYLE[check.status], escape(check.detail),
                      escape(check.fix))
    console.print(table)
    missing = [check.name for check in checks if not check.ok]
    help_text = no_model_answers(settings) if "VLM endpoint" in missing else None
    if help_text is not None:
        console.print(Text(help_text))
    if missing:
        errors.print(f"[red]not ready:[/red] {', '.join(missing)}")
        raise typer.Exit(1)
    console.print("[green]ready[/green]: the configured path can run")


vlm_app = typer.Typer(help="Host the vision-language model (Keye-VL-8B) with vLLM.",
                      no_args_is_help=True)
app.add_typer(vlm_app, name="vlm")


@vlm_app.command("serve")
def vlm_serve(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the command, run nothing.")] = (
        False),
) -> None:
    """Run `vllm serve` for the configured model with the flags Keye-VL needs."""
    import os
    import shlex
    import shutil

    from img2music.server.vllm.launch import INSTALL_HINT, vllm_command, vllm_environment

    settings = get_settings()
    executable = shutil.which("vllm")
    command = vllm_command(settings, executable or "vllm")
    environment = vllm_environment(settings, os.environ)
    keyed = " (the API key in its environment: VLLM_API_KEY)" \
        if "VLLM_API_KEY" in environment else ""
    if dry_run:
        console.print(shlex.join(command), highlight=False, soft_wrap=True)
        if keyed:
            errors.print(keyed.strip(" ()"), highlight=False)
        return
    if executable is None:
        errors.print(Text(f"error: {INSTALL_HINT}"))
        raise typer.Exit(1)
    console.print(f"starting: {shlex.join(command)}{keyed}", highlight=False)
    os.execve(executable, command, environment)


@app.command("eval")
def eval_command(
    images: Annotated[list[Path], typer.Option(
        "--images", help="Images, or folders of images; repeatable.")],
    out: Annotated[Path | None, typer.Option(
        "--out", help="Results folder; running again resumes it. Default: "
        "IMG2MUSIC_DATA_DIR/eval/<name of the first --images>.")] = None,
    variants: Annotated[list[str] | None, typer.Option(
        "--variants", help="Comma-separated or repeated: full, no-rag, no-refine, "
        "no-rag-no-refine, caption-only, or one from --config. Default: all of them (full "
        "alone with --prompts).")] = None,
    prompts: Annotated[list[str] | None, typer.Option(
        "--prompts", help="NAME=DIR: the variants again with this prompt folder, as variant "
        "NAME; repeat to compare prompt sets image by image.")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", help="TOML file of variants: a table per name (variants.NAME), each a "
        "set of settings.")] = None,
    reference: Annotated[str | None, typer.Option(
        "--reference", help="The variant the others are compared with, image by image. "
        "Default: the first.")] = None,
    repeats: Annotated[int | None, typer.Option(
        "--repeats", min=1, max=20, help="Judge answers per question and tune. Default: "
        "IMG2MUSIC_JUDGE_REPEATS.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the judge's order and of the "
                                      "bootstrap.")] = 0,
    judge: Annotated[bool, typer.Option(
        "--judge/--no-judge", help="Ask the machine judge (IMG2MUSIC_JUDGE_*).")] = True,
    clip: Annotated[bool, typer.Option(
        "--clip/--no-clip", help="The CLIP proxy: the image against the caption the judge "
        "model writes for the tune.")] = True,
    note: Annotated[str, typer.Option("--note", help="A line about the mood you want.")] = "",
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, max=64)] = 4,
) -> None:
    """Compare variants of the graph on your images: machine judge, model-free measures,
    bootstrap intervals, paired differences; resumable."""
    from rich.markdown import Markdown

    from img2music.eval.runner import EvalOptions, run_eval
    from img2music.eval.variants import VariantError, parse_prompt_option, resolve_variants

    paths = _image_paths(images)
    names = [name.strip() for value in variants or [] for name in value.split(",")
             if name.strip()]
    try:
        chosen = resolve_variants(names or None, config=config,
                                  prompts=[parse_prompt_option(p) for p in prompts or []])
    except VariantError as error:
        errors.print(Text(f"error: {error}"))
        raise typer.Exit(EXIT_USAGE) from error
    if reference is not None and reference not in {v.name for v in chosen}:
        errors.print(Text(f"error: --reference {reference} is not among the variants run "
                          f"({', '.join(v.name for v in chosen)})"))
        raise typer.Exit(EXIT_USAGE)
    folder = out or get_settings().data_dir / "eval" / (images[0].stem or "images")
    options = EvalOptions(images=paths, out=folder, variants=chosen, reference=reference,
                          judge=judge, clip=clip, repeats=repeats, seed=seed,
                          concurrency=concurrency, note=note)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TextColumn(
            "{task.completed}/{task.total}"), TimeElapsedColumn(), console=console,
                  transient=True) as progress:
        task = progress.add_task("starting", total=None)

        def show(what: str, done: int, total: int) -> None:
            progress.update(task, description=what, completed=done, total=total)

        result = run_eval(options, on_progress=show)
    console.print(Markdown(result.markdown))
    console.print(Text(f"composed {result.composed}, reused {result.reused} from earlier runs, "
                       f"{result.judge_calls} judge calls"))
    for name in ("summary.md", "items.csv", "items.jsonl", "scores.png"):
        console.print(Text(f"{name}: {result.files[name]}"))
    for line in result.errors:
        errors.print(Text(line))
    raise typer.Exit(1 if result.errors else 0)
