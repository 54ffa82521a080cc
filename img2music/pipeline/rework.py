"""Working on a tune that exists: compose one `% [section]` of a finished run again, or continue
an ABC or MIDI tune for more bars. One model call each, never a loop.

The model writes only the new music (the section, or the new bars) as a tune of its own under the
tune's header, so the ABC grammar, extraction and repair apply to its answer as to any tune; its
body is then spliced into the tune (`tools.abc.sections`): every line outside the section, or
before the new bars, stays as it was. The whole tune is checked and measured again and written
as a new run folder, with the full set of files and a report that names the source, the section
and the seed; the source is never changed. A tune that does not play is reported, not delivered.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, cast

from PIL import Image

from img2music.graph.context import Context
from img2music.graph.models import (
    VLMUnavailable,
    acall_model,
    answer_constraint,
    chat_model,
    endpoint_report,
    prompt_switch,
    to_langchain,
)
from img2music.graph.nodes import (
    MAX_BARS,
    MAX_FAULTS_SHOWN,
    MAX_RAW_CHARS,
    ModelFor,
    read_answer,
)
from img2music.graph.state import Attempt, AttemptKind, Check, Message, Metrics, State
from img2music.pipeline.report import read_report, write_run
from img2music.pipeline.runs import (
    CANCELLED,
    Composition,
    Progress,
    RunStop,
    cancelled_by,
    failed_run,
    failure_of,
    shown_settings,
)
from img2music.prompt_files import prompt_set, render_prompt
from img2music.settings import Settings, get_settings
from img2music.templating import TemplateRefused
from img2music.tools.abc.check import compile_abc, decode_abc, normalise_abc
from img2music.tools.abc.convert import InvalidMidi, midi_to_abc
from img2music.tools.abc.scan import scan_abc
from img2music.tools.abc.sections import (
    SectionAnswerUnusable,
    append_bars,
    body_lines,
    find_section,
    header_lines,
    replace_section,
    section_text,
    voice_ids,
)
from img2music.tools.metrics import evaluate_midi

MIDI_SUFFIXES = (".mid", ".midi")
# A spliced tune is ready once the answer's music is in it: (tune, answer body) -> (new tune,
# what was changed besides the new music).
Splice = Callable[[str, list[str]], tuple[str, list[str]]]


class ReworkRefused(ValueError):
    """The source cannot be worked on (no tune, no such section, an unreadable file); one line,
    said before any model call."""


@dataclass(frozen=True)
class _Source:
    """What a new run is made from: a tune, and for the report where it came from."""

    abc: str
    name: str  # the source run's folder name, or the file's name
    report: dict[str, Any]  # what the new report says of it
    description: str = ""
    image: Path | None = None  # the source run's image, copied into the new run


def section_folder(run: Path, section: str) -> Path:
    """A new folder beside the run, `NAME-section-theme` (then `-2`, `-3` … when taken)."""
    slug = "-".join("".join(c if c.isalnum() else " " for c in section.lower()).split())
    return _free(run.parent / f"{run.name}-section-{slug or 'untitled'}")


def continuation_folder(tune: Path, root: Path) -> Path:
    """`root/STEM-continued` (then `-2`, `-3` …)."""
    return _free(root / f"{tune.stem}-continued")


def _free(folder: Path) -> Path:
    candidate, number = folder, 2
    while candidate.exists():
        candidate, number = folder.with_name(f"{folder.name}-{number}"), number + 1
    return candidate


def source_run(run: Path, section: str) -> tuple[_Source, str]:
    """The finished run's tune and the section asked for (its name as the tune writes it);
    `ReworkRefused` when the run has no tune or no such section."""
    report = read_report(run)
    abc = report.get("final_abc")
    if not report:
        raise ReworkRefused(f"{run} is not a run folder: it has no readable report.json")
    if not abc:
        raise ReworkRefused(f"the run {run.name} has no tune to work on "
                            f"({report.get('failure') or 'it made none'})")
    try:
        found = find_section(abc, section)
    except ValueError as error:
        raise ReworkRefused(str(error)) from None
    image_file = report.get("image_file")
    image = run / Path(str(image_file)).name if image_file else None
    return _Source(abc=abc, name=run.name, description=str(report.get("description", "")),
                   image=image if image is not None and image.is_file() else None,
                   report={"kind": "section", "run": run.name, "section": found.name,
                           "image": image_file}), found.name


def read_tune_file(path: Path, settings: Settings | None = None) -> str:
    """The tune of an ABC file, or of a MIDI file through midi2abc (`tools.abc.convert`);
    `ReworkRefused` when it cannot be read or does not play."""
    settings = settings or get_settings()
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ReworkRefused(f"{path.name} cannot be read: {error.strerror or error}") from None
    return tune_from_bytes(data, midi=path.suffix.lower() in MIDI_SUFFIXES, name=path.stem,
                           settings=settings)


def tune_from_bytes(data: bytes, *, midi: bool, name: str, settings: Settings) -> str:
    """An uploaded or read tune as ABC that plays (the directive filter has read it); MIDI is
    converted first."""
    if midi:
        try:
            text = midi_to_abc(data, title=name, settings=settings)
        except InvalidMidi as error:
            raise ReworkRefused(f"{name}: {error}") from None
    else:
        if len(data) > settings.max_abc_bytes:
            raise ReworkRefused(f"{name}: the ABC is {len(data):,} bytes, over the "
                                f"{settings.max_abc_bytes:,}-byte limit")
        text, _ = decode_abc(data)
    compiled = compile_abc(normalise_abc(text), settings=settings)
    if not compiled.check.ok:
        raise ReworkRefused(f"{name} is not a tune that plays: {compiled.check.summary()}")
    return compiled.abc  # as the programs read it: without the directives the filter removed


def file_source(abc: str, name: str, *, midi: bool) -> _Source:
    return _Source(abc=abc, name=name, report={"kind": "continuation", "file": name,
                                               "from_midi": midi})


async def arecompose_section(
    run: Path | str, section: str, *, out_dir: Path | str | None = None, note: str = "",
    seed: int | None = None, settings: Settings | None = None,
    model_for: ModelFor | None = None, on_progress: Progress | None = None,
    stop: RunStop | None = None, files_when_asked: bool = False,
) -> Composition:
    """Compose the section `section` of the finished run in `run` again, with the rest of the
    tune as context; a new run folder (default `section_folder`) gets the whole tune."""
    settings = settings or get_settings()
    run = Path(run)
    source, name = await asyncio.to_thread(source_run, run, section)
    found = find_section(source.abc, name)
    header = header_lines(source.abc)
    current = section_text(source.abc, found)
    first = current.split("\n")[: found.parts[0].end - found.parts[0].start]
    sized = scan_abc("\n".join([*header, *first]) + "\n").tunes
    variables = {"tune": source.abc, "description": source.description, "section": name,
                 "current": current, "bars": max(sized[0].bar_count if sized else 0, 1),
                 "voices": [part.voice for part in found.parts if part.voice is not None],
                 "note": note}

    def splice(tune: str, answer: list[str]) -> tuple[str, list[str]]:
        return replace_section(tune, find_section(tune, name), answer), []

    out = Path(out_dir) if out_dir else section_folder(run, name)
    return await _rework(source, "section.j2", variables, splice, kind="section", out=out,
                         note=note, seed=seed, settings=settings, model_for=model_for,
                         on_progress=on_progress, stop=stop, files_when_asked=files_when_asked)


async def acontinue_tune(
    abc: str, bars: int, *, name: str, out_dir: Path | str, midi: bool = False, note: str = "",
    seed: int | None = None, settings: Settings | None = None,
    model_for: ModelFor | None = None, on_progress: Progress | None = None,
    stop: RunStop | None = None, files_when_asked: bool = False,
) -> Composition:
    """Continue the tune `abc` (read by `read_tune_file` or `tune_from_bytes`) for about `bars`
    bars; the run folder `out_dir` gets the whole tune, the original bars unchanged."""
    settings = settings or get_settings()
    if not 1 <= bars <= MAX_BARS:
        raise ReworkRefused(f"a continuation adds 1 to {MAX_BARS} bars, not {bars}")
    scanned = scan_abc(abc).tunes
    variables = {"tune": abc, "bars": bars, "has_bars": scanned[0].bar_count if scanned else 0,
                 "voices": voice_ids(abc), "note": note}
    return await _rework(file_source(abc, name, midi=midi), "continue.j2", variables,
                         append_bars, kind="continue", out=Path(out_dir), note=note, seed=seed,
                         settings=settings, model_for=model_for, on_progress=on_progress,
                         stop=stop, files_when_asked=files_when_asked, bars_asked=bars)


async def _rework(
    source: _Source, template: str, variables: dict[str, Any], splice: Splice, *,
    kind: AttemptKind, out: Path, note: str, seed: int | None, settings: Settings,
    model_for: ModelFor | None, on_progress: Progress | None, stop: RunStop | None,
    files_when_asked: bool, bars_asked: int | None = None,
) -> Composition:
    """The one model call, the splice, the check of the whole tune and the run's files. Like
    `acompose`, a stop cancels the call in flight, and a finished tune's files are written."""
    started = time.perf_counter()
    context = Context.from_settings(settings, seed=seed)
    label = Path(source.name)
    task = asyncio.ensure_future(_answer(source, template, variables, splice, kind, context,
                                         settings, model_for, on_progress))
    if stop is not None:
        stop.attach(task)
    try:
        final = await task
    except asyncio.CancelledError:
        stopped = cancelled_by(stop)
        if stopped is None:
            raise  # this caller was cancelled, not the run
        return await asyncio.to_thread(failed_run, label, out, stopped.reason or CANCELLED,
                                       stopped.kind, settings)
    except (VLMUnavailable, TemplateRefused) as error:
        return await asyncio.to_thread(failed_run, label, out, *failure_of(error, label),
                                       settings)
    final["note"] = note

    def write() -> tuple[dict[str, Path], dict[str, Any]]:
        out.mkdir(parents=True, exist_ok=True)
        picture = None
        report: dict[str, Any] = {"image": source.report.get("image") or source.name}
        if source.image is not None:
            copied = shutil.copyfile(source.image, out / source.image.name)
            report["image_file"] = copied.name
            with Image.open(copied) as opened:
                picture = opened.convert("RGB")
        prompts = prompt_set(context.prompts_dir or None)
        report.update({
            "source": {**source.report, "seed": context.seed,
                       **_bars_added(source.abc, final, bars_asked)},
            "settings": shown_settings(context),
            "prompt_set": {"name": prompts.name, "hash": prompts.hash},
            "vlm_endpoint": None if settings.vlm_backend == "local" else endpoint_report(
                context.vlm_base_url, context.vlm_model, choice=settings.vlm_profile),
            "wall_seconds": time.perf_counter() - started,
        })
        return write_run(out, final, picture, report, settings=settings,
                         when_asked=files_when_asked)

    writing = asyncio.ensure_future(asyncio.to_thread(write))
    try:
        files, report = await asyncio.shield(writing)
    except asyncio.CancelledError:
        await writing
        raise
    done = final.get("status") == "done"
    return Composition(
        image=label, out_dir=out, abc=final.get("final_abc"),
        motivation=final.get("motivation", ""), files=files, report=report,
        error=None if done else str(final.get("failure") or "no tune"),
        failure_kind=None if done else "no_tune",
        faults=final.get("faults", []), fault_count=final.get("fault_count", 0))


def _bars_added(before: str, final: State, asked: int | None) -> dict[str, Any]:
    if asked is None or not final.get("final_abc"):
        return {"bars_asked": asked} if asked is not None else {}
    had = scan_abc(before).tunes
    has = scan_abc(final.get("final_abc") or "").tunes
    added = (has[0].bar_count if has else 0) - (had[0].bar_count if had else 0)
    return {"bars_asked": asked, "bars_added": added}


async def _answer(source: _Source, template: str, variables: dict[str, Any], splice: Splice,
                  kind: AttemptKind, context: Context, settings: Settings,
                  model_for: ModelFor | None, on_progress: Progress | None) -> State:
    """Ask once, splice the answer's music into the tune, check and measure the whole."""
    folder = context.prompts_dir or None
    thinking = prompt_switch(context.vlm_thinking, context.vlm_model)
    conversation: list[Message] = [
        {"role": "system", "content": render_prompt("system.j2", folder=folder)},
        {"role": "user", "content": render_prompt(template, folder=folder, thinking=thinking,
                                                  **variables)}]
    model = await asyncio.to_thread(model_for or partial(chat_model, settings=settings), context)
    constraint = await asyncio.to_thread(answer_constraint, context, model,
                                         backend=settings.vlm_backend)
    reply = await acall_model(model, to_langchain(conversation), endpoint=context.vlm_base_url,
                              constraint=constraint, seed=context.call_seed(0))
    extraction, repaired, fixes = await read_answer(reply, context)
    tune: str | None = None
    problem = "the answer has no ABC tune"
    if repaired is not None:
        try:
            tune, changes = splice(source.abc, body_lines(repaired.abc))
            fixes.extend(changes)
        except SectionAnswerUnusable as error:
            problem = str(error)
    attempt: Attempt = {
        "n": 0, "round": 0, "kind": kind, "raw": reply.text[:MAX_RAW_CHARS], "abc": tune,
        "motivation": extraction.motivation, "fixes": fixes, "notes": extraction.notes,
        "check": None, "midi": None, "metrics": None, "valid": False,
        "input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens,
        "seconds": reply.seconds, "constrained": reply.constrained}
    label = source.name
    if on_progress is not None:
        on_progress(label, "compose", {"attempts": [attempt]})
    state: State = {
        "description": source.description, "attempts": [attempt], "best": None,
        "conversation": [*conversation, {"role": "assistant", "content": reply.text}],
        "usage": {kind: {"calls": 1, "input_tokens": reply.input_tokens,
                         "output_tokens": reply.output_tokens}},
        "timings": {kind: reply.seconds}}
    if tune is None:
        return {**state, "status": "failed", "failure": problem, "final_abc": None}
    compiled = await asyncio.to_thread(compile_abc, tune, settings=settings)
    check = compiled.check
    attempt = {**attempt, "abc": compiled.abc, "check": cast(Check, check.model_dump()),
               "valid": check.ok,
               "midi": base64.b64encode(compiled.midi).decode("ascii") if compiled.midi else None}
    if on_progress is not None:
        on_progress(label, "parse_check", {"attempts": [attempt], "best": 0 if check.ok else None})
    if not check.ok or compiled.midi is None:
        return {**state, "attempts": [attempt], "status": "failed", "final_abc": None,
                "failure": f"the tune with the new music does not play: {check.summary()}"}
    metrics = await asyncio.to_thread(evaluate_midi, compiled.midi, bars=check.bars,
                                      voices=check.voices)
    attempt = {**attempt, "metrics": cast(Metrics, metrics.model_dump())}
    if on_progress is not None:
        on_progress(label, "evaluate", {"attempts": [attempt]})
    return {**state, "attempts": [attempt], "best": 0, "status": "done",
            "final_abc": compiled.abc, "motivation": extraction.motivation,
            "faults": [fault.one_line() for fault in check.faults[:MAX_FAULTS_SHOWN]],
            "fault_count": check.fault_count}
