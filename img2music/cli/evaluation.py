"""`img2music eval`: variants of the graph on your images, judged, measured and compared."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from img2music.cli.index import build_first_use_index
from img2music.cli.output import EXIT_USAGE, console, errors, image_paths, live_progress
from img2music.cli.run_options import with_run_options
from img2music.settings import get_settings


@with_run_options
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
    judge_seed: Annotated[int, typer.Option(
        "--judge-seed", help="Seed of the judge's order and of the bootstrap (the runs' own "
        "seed is --seed, else IMG2MUSIC_SEED, else 0).")] = 0,
    judge: Annotated[bool, typer.Option(
        "--judge/--no-judge", help="Ask the machine judge (IMG2MUSIC_JUDGE_*).")] = True,
    clip: Annotated[bool, typer.Option(
        "--clip/--no-clip", help="The CLIP proxy: the image against the caption the judge "
        "model writes for the tune.")] = True,
    note: Annotated[str, typer.Option("--note", help="A line about the mood you want.")] = "",
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, max=64)] = 4,
    *,
    run_options: dict[str, Any],
) -> None:
    """Compare variants of the graph on your images: machine judge, model-free measures,
    bootstrap intervals, paired differences; resumable. The run settings given apply to every
    variant, under what each variant sets itself."""
    from rich.markdown import Markdown

    from img2music.eval.runner import EvalOptions, run_eval
    from img2music.eval.variants import VariantError, parse_prompt_option, resolve_variants
    from img2music.pipeline.index_build import first_use_source

    paths = image_paths(images)
    names = [name.strip() for value in variants or [] for name in value.split(",")
             if name.strip()]
    try:
        chosen = resolve_variants(names or None, config=config,
                                  prompts=[parse_prompt_option(p) for p in prompts or []],
                                  base=run_options)
    except VariantError as error:
        errors.print(Text(f"error: {error}"))
        raise typer.Exit(EXIT_USAGE) from error
    if reference is not None and reference not in {v.name for v in chosen}:
        errors.print(Text(f"error: --reference {reference} is not among the variants run "
                          f"({', '.join(v.name for v in chosen)})"))
        raise typer.Exit(EXIT_USAGE)
    settings = get_settings()
    if any(first_use_source(settings, rag=context.rag, rag_k=context.rag_k)
           for context in (variant.context(settings) for variant in chosen)):
        build_first_use_index(settings)
    folder = out or settings.data_dir / "eval" / (images[0].stem or "images")
    options = EvalOptions(images=paths, out=folder, variants=chosen, reference=reference,
                          judge=judge, clip=clip, repeats=repeats, seed=judge_seed,
                          concurrency=concurrency, note=note)
    with live_progress(counts=True, transient=True) as progress:
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
