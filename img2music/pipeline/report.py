"""Writing a run's files: the tune, its audio and score, the explanation, and the reports."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files as files_of
from pathlib import Path
from typing import Any, cast

import numpy as np
from jinja2 import PackageLoader
from markupsafe import Markup
from PIL import Image

from img2music.graph.state import State, usage_totals
from img2music.redaction import scrub
from img2music.settings import Settings
from img2music.templating import BoundedSandbox, render, sandbox
from img2music.tools.abc.check import ParseCheck
from img2music.tools.abc.scan import first_field
from img2music.tools.files import write_atomic
from img2music.tools.images import data_url, jpeg_bytes
from img2music.tools.metrics import TuneMetrics
from img2music.tools.programs import which
from img2music.tools.render.audio import AudioFormat
from img2music.tools.render.tune import render_all
from img2music.tools.retrieval.retriever import shown_similarity

logger = logging.getLogger(__name__)

DATA_URL = re.compile(r"data:image/[a-z]+;base64,[A-Za-z0-9+/=]+")
EMBED_AUDIO_LIMIT = 12_000_000
REPORT_JPEG_QUALITY = 85
TEMPLATES = files_of("img2music.pipeline") / "templates"
REPORT_CSS = (TEMPLATES / "report.css").read_text(encoding="utf-8")
# The page's one style sheet, allowed by its hash: the report's policy allows no inline style
# or script of any other kind.
REPORT_CSS_HASH = "sha256-" + base64.b64encode(
    hashlib.sha256(REPORT_CSS.encode()).digest()).decode()
# What each of a run's files is, as the report lists them (others are listed by name).
FILE_LABELS = {
    "tune.abc": "the tune in ABC",
    "tune.mid": "MIDI, a track per voice with its instrument, for a sequencer or DAW",
    "tune.musicxml": "MusicXML, to edit the score in MuseScore or another notation program",
    "tune.ogg": "the tune played (Ogg Vorbis)",
    "tune.wav": "the tune played (WAV)",
    "score.svg": "the score (SVG)",
    "pianoroll.png": "the piano roll",
    "attention.png": "the explanation map",
    "motivation.md": "why it sounds like this (Markdown)",
    "report.json": "this report, as data",
}
ATTENTION_LABELS = {
    "attention": "Where the model looked while composing: attention of the tune's tokens to "
                 "the image (mean over layers, heads and tokens)",
    "clip": "CLIP patch relevance of the motivation (not the model's attention)",
}


def write_run(
    out: Path, final: State, picture: Image.Image | None, report: dict[str, Any], *,
    settings: Settings, when_asked: bool = False,
) -> tuple[dict[str, Path], dict[str, Any]]:
    """Files of one run; no `tune.abc` unless a valid tune was made. The WAV is kept only when
    asked (`keep_wav`) or when there is no Ogg made from it. Keys and this machine's paths are
    scrubbed from both reports; every file is written atomically. A run made from a tune
    rather than an image (a continuation) has no `picture`.

    With `when_asked` (the server), the audio, the MusicXML and the HTML report (which embeds
    the audio) are the run's files all the same but are made by `make_when_asked` the first
    time someone asks for them: they cost more CPU than the rest of a run together, and an API
    client that wants the tune never asks (`report["when_asked"]` names them)."""
    out.mkdir(parents=True, exist_ok=True)
    final = scrub(final, settings)
    files: dict[str, Path] = {}
    problems: list[str] = []
    later: list[str] = ["report.html"] if when_asked else []
    abc = final.get("final_abc")
    if abc:
        files["tune.abc"] = write_atomic(out / "tune.abc", abc)
        audio = _audio_files(settings)
        rendered = render_all(abc, out, wav=False if when_asked else audio.wav,
                              audio_formats=() if when_asked else audio.formats,
                              musicxml=not when_asked, settings=settings,
                              checked_midi=_checked_midi(final))
        files.update({path.name: path for path in rendered.files.values()})
        problems.extend(rendered.problems)
        if when_asked and "midi" in rendered.files:
            later.extend([*audio.names, "tune.musicxml"])
        files["motivation.md"] = write_atomic(out / "motivation.md", _motivation_markdown(final))
    maps = _attention_maps(out, final, picture)
    files.update({name: out / name for name in _map_files(maps)})
    listed = sorted({*files, *later} - {"report.html"})
    full = scrub({**report, **_without_images(final), "render_problems": problems,
                  "attention_maps": maps, "when_asked": later,
                  "files": [*listed, "report.json", "report.html"]}, settings)
    files["report.json"] = write_atomic(out / "report.json",
                                        json.dumps(full, indent=2, default=str))
    if not when_asked:
        files["report.html"] = write_atomic(out / "report.html",
                                            _html(final, picture, files, full))
    return files, full


@dataclass(frozen=True)
class _Audio:
    wav: bool  # the WAV is kept
    formats: tuple[AudioFormat, ...]  # encoded from it

    @property
    def names(self) -> list[str]:
        return [*(["tune.wav"] if self.wav else []), *(f"tune.{fmt}" for fmt in self.formats)]


def _audio_files(settings: Settings) -> _Audio:
    """Ogg Vorbis when sox is there; the WAV when asked (`keep_wav`) or when there is no Ogg."""
    formats: tuple[AudioFormat, ...] = ("ogg",) if which("sox") else ()
    return _Audio(wav=settings.keep_wav or not formats, formats=formats)


def make_when_asked(folder: Path, name: str, settings: Settings) -> bool:
    """Make a file a run lists but left until asked for (`write_run(when_asked=True)`): the
    audio from the run's MIDI, the MusicXML, the HTML report once the audio is there. False
    when the run does not list `name` as such; the caller makes sure one call at a time works
    on a run."""
    report = read_report(folder)
    later = report.get("when_asked", [])
    if name not in later or (folder / name).is_file():
        return name in later
    audio = _audio_files(settings)
    audio_names = [file for file in audio.names if file in later]
    if name != "tune.musicxml" and audio_names \
            and not all((folder / file).is_file() for file in audio_names):
        rendered = render_all(report.get("final_abc") or "", folder, midi=False, svg=False,
                              png=False, wav=audio.wav, audio_formats=audio.formats,
                              settings=settings,
                              checked_midi=(folder / "tune.mid").read_bytes())
        if rendered.problems:
            logger.warning("audio of %s: %s", folder.name, "; ".join(rendered.problems))
    if name == "tune.musicxml":
        rendered = render_all(report.get("final_abc") or "", folder, midi=False, svg=False,
                              png=False, wav=False, musicxml=True, settings=settings,
                              checked_midi=(folder / "tune.mid").read_bytes())
        if rendered.problems:
            logger.warning("MusicXML of %s: %s", folder.name, "; ".join(rendered.problems))
    if name == "report.html":
        files = {file: folder / file for file in report.get("files", [])
                 if (folder / file).is_file()}
        image = Path(str(report.get("image_file") or "")).name
        picture = None
        # A take's folder is inside its run's, which holds the image the takes share; a
        # continuation has no image.
        found = folder / image if (folder / image).is_file() else folder.parent / image
        if image and found.is_file():
            with Image.open(found) as opened:
                picture = opened.convert("RGB")
        write_atomic(folder / "report.html", _html(cast(State, report), picture, files, report))
    return True


def _checked_midi(final: State) -> bytes | None:
    """The MIDI parse-check compiled for the tune the run stands on (compiled once)."""
    best = final.get("best")
    midi = final["attempts"][best]["midi"] if best is not None else None
    return base64.b64decode(midi) if midi else None


def _attention_maps(out: Path, final: State,
                    picture: Image.Image | None) -> dict[str, Any] | None:
    """The explanation's overlays: the whole tune's, then one per section when there are any.

    Returns what a client needs to offer them: the method, its label, any note, and the file of
    each map (`attention.png`, then `attention-1.png`... in the tune's order of sections).
    """
    explanation = final.get("explanation")
    if explanation is None or "grid" not in explanation or picture is None:
        return None
    grid = explanation["grid"]
    from img2music.tools.render.overlays import draw_overlay

    method = explanation.get("method", "clip")
    label = ATTENTION_LABELS.get(method, method)
    draw_overlay(picture, np.asarray(grid, dtype=np.float64), out / "attention.png", title=label)
    sections = []
    for index, (name, section) in enumerate((explanation.get("sections") or {}).items(), 1):
        file = f"attention-{index}.png"
        draw_overlay(picture, np.asarray(section, dtype=np.float64), out / file,
                     title=f"{label}; section {name}")
        sections.append({"name": name, "file": file})
    return {"method": method, "label": label, "note": explanation.get("note"),
            "file": "attention.png", "sections": sections}


def _map_files(maps: dict[str, Any] | None) -> list[str]:
    if maps is None:
        return []
    return [maps["file"], *(section["file"] for section in maps["sections"])]


def chosen_metrics(report: dict[str, Any]) -> dict[str, float | None] | None:
    """The eight metrics and the size of the tune a run stands on, flat
    (`{"pitch_range": 16.0, ...}`); None when it has none."""
    best = report.get("best")
    measured = report.get("attempts", [])[best]["metrics"] if best is not None else None
    return TuneMetrics.model_validate(measured).as_dict() if measured else None


def _without_images(state: State) -> dict[str, Any]:
    """The state as JSON, the image data URLs replaced by a marker and the attempts' MIDI left
    out (tune.mid holds the chosen one): reports stay small."""
    text = json.dumps(dict(state), default=str)
    shown = dict(json.loads(DATA_URL.sub("data:image (omitted)", text)))
    for attempt in shown.get("attempts", []):
        attempt.pop("midi", None)
    return shown


def _motivation_markdown(final: State) -> str:
    title = _title(final.get("final_abc") or "")
    return (f"# {title}\n\n{final.get('motivation', '').strip()}\n\n"
            f"## What the model saw\n\n{final.get('description', '').strip()}\n")


def _title(abc: str) -> str:
    return first_field(abc, "T") or "Untitled"


def _verdict(attempt: dict[str, Any]) -> str:
    """Whether the attempt plays, and how many faults a musician would still correct in it."""
    if not attempt.get("check"):
        return "not checked"
    if not attempt["valid"]:
        return "does not play"
    faults = int(attempt["check"].get("fault_count", 0))
    return f"plays, {faults} fault{'s' if faults > 1 else ''}" if faults else "plays"


def _attempt_summary(attempt: dict[str, Any]) -> str:
    check = attempt.get("check")
    if check and (not attempt["valid"] or (check.get("fault_count") and not attempt["metrics"])):
        return ParseCheck.model_validate(check).feedback(limit=3)
    if attempt.get("metrics"):
        return TuneMetrics.model_validate(attempt["metrics"]).summary()
    return "; ".join(attempt.get("notes", []))


def _html(final: State, picture: Image.Image | None, files: dict[str, Path],
          report: dict[str, Any]) -> str:
    """The report page: one self-contained file whose Content-Security-Policy lets nothing run
    and loads nothing; everything the model wrote is escaped text, and the score is an image
    (an SVG shown by `<img>` runs no script, whatever it holds)."""
    audio = files.get("tune.ogg") or files.get("tune.wav")
    audio_src = None
    if audio is not None and audio.stat().st_size <= EMBED_AUDIO_LIMIT:
        audio_src = data_url(audio.read_bytes(),
                             "audio/ogg" if audio.suffix == ".ogg" else "audio/wav")
    score = files.get("score.svg")
    usage = usage_totals(final.get("usage", {}))
    explanation = final.get("explanation")
    method = explanation["method"] if explanation else ""
    maps = report.get("attention_maps") or {"sections": []}
    return render(
        _report_environment(), template="report.html.j2", max_chars=None, variables=dict(
            css=Markup(REPORT_CSS),
            css_hash=REPORT_CSS_HASH,
            title=_title(final.get("final_abc") or "") if final.get("final_abc") else "No tune",
            status_line=f"{final.get('status', 'failed')} · {report.get('image', '')}",
            failure=final.get("failure"),
            image_src=data_url(jpeg_bytes(picture, quality=REPORT_JPEG_QUALITY), "image/jpeg")
            if picture is not None else None,
            attention_src=data_url(files["attention.png"].read_bytes(), "image/png")
            if "attention.png" in files else None,
            attention_label=ATTENTION_LABELS.get(method, ""),
            section_maps=[{"name": section["name"],
                           "src": data_url(files[section["file"]].read_bytes(), "image/png")}
                          for section in maps["sections"]],
            audio_src=audio_src,
            score_src=data_url(score.read_bytes(), "image/svg+xml") if score else None,
            motivation=final.get("motivation", ""),
            description=final.get("description", ""),
            examples=[{
                "title": e.get("metadata", {}).get("title") or e["id"], "caption": e["caption"],
                "score": e["score"], "image": shown_similarity(e.get("image_similarity")),
                "text": shown_similarity(e.get("text_similarity")),
            } for e in final.get("examples", [])],
            attempts=[{**a, "summary": _attempt_summary(dict(a)), "verdict": _verdict(dict(a))}
                      for a in final.get("attempts", [])],
            abc=final.get("final_abc"),
            faults=final.get("faults", []) if final.get("final_abc") else [],
            fault_count=final.get("fault_count", 0),
            controls=final.get("controls", []) if final.get("final_abc") else [],
            prompt_set=report.get("prompt_set", {}).get("hash", ""),
            model=report.get("settings", {}).get("vlm_model", ""),
            seed=report.get("settings", {}).get("seed", ""),
            endpoint=report.get("vlm_endpoint"),
            calls=usage["calls"],
            tokens=usage["input_tokens"] + usage["output_tokens"],
            seconds=f"{report.get('wall_seconds', 0):.1f}",
            files=[{"name": name, "label": FILE_LABELS.get(name, "")}
                   for name in report.get("files", []) if name != "report.html"],
        ))


@lru_cache(maxsize=1)
def _report_environment() -> BoundedSandbox:
    return sandbox(PackageLoader("img2music.pipeline", "templates"), autoescape=True)


def read_report(folder: Path) -> dict[str, Any]:
    """A run folder's report.json, or {} when there is none (yet) or it cannot be read."""
    try:
        return dict(json.loads((folder / "report.json").read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return {}
