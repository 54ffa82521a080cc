"""A section composed again, and a tune continued: one model call (scripted here), the music
spliced in with every other line unchanged, the whole tune checked, measured and written as a
new run that names its source; real programs (abc2midi, midi2abc, the renderers) throughout."""

from __future__ import annotations

import asyncio
import base64
import difflib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from img2music.cli.main import app
from img2music.graph.context import Context
from img2music.pipeline.rework import (
    ReworkRefused,
    acontinue_tune,
    arecompose_section,
    read_tune_file,
)
from img2music.pipeline.runs import acompose
from img2music.settings import Settings, get_settings
from img2music.tools.abc.convert import abc_to_midi
from img2music.tools.abc.sections import (
    append_bars,
    find_section,
    find_sections,
    replace_section,
    section_names,
)
from tests.openai_server import last_user_text
from tests.oracles import ABC2MIDI_ERROR, abc2midi_output, sounding_notes
from tests.realworld import llm_replies
from tests.scripted import ScriptedChatModel
from tests.test_graph import DESCRIPTION, PHOTO, TUNE, answer, reply_for
from tests.test_server import KEY, Served, image_message, img2music_server

HEADER = "X:1\nT:Dignity\nM:4/4\nL:1/8\nQ:1/4=72\nK:D\n"
NEW_THEME = "% [theme]\nA2 d2 f2 a2 | g2 f2 e4 | f2 e2 d2 B2 | A8 |\n"
NEW_BARS = "G2 B2 d2 g2 | f2 e2 d4 | e2 d2 B2 A2 | D8 |]\n"
TWO_VOICES = """X:1
T:Pair
M:4/4
L:1/8
K:D
V:1 name="Melody"
%%MIDI program 73
% [theme]
D2 F2 A2 d2 | c2 B2 A4 |
% [close]
F2 A2 d2 f2 | D8 |]
V:2 name="Bass"
%%MIDI program 32
% [theme]
D,8 | A,,8 |
% [close]
D,4 A,,4 | D,8 |]
"""


def scripted(*replies: str) -> ScriptedChatModel:
    return ScriptedChatModel(replies=list(replies))


def plays(abc: str) -> bool:
    """abc2midi, the reference, writes sounding MIDI for it without an error."""
    said, midi = abc2midi_output(abc)
    return sounding_notes(midi) > 0 and not ABC2MIDI_ERROR.search(said)


def changed_lines(before: str, after: str) -> list[str]:
    """The lines of `before` that a diff says are gone or changed in `after`."""
    return [line[2:] for line in difflib.ndiff(before.split("\n"), after.split("\n"))
            if line.startswith("- ")]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real composition's run folder (scripted model, real checks and files)."""
    root = tmp_path_factory.mktemp("runs")
    model = scripted(DESCRIPTION, answer(TUNE))
    result = asyncio.run(acompose(PHOTO, out_dir=root / "portrait", model_for=lambda _: model,
                                  settings=Settings(data_dir=root), rag=False, refine=False,
                                  explain="none"))
    assert result.ok, result.error
    return result.out_dir


def test_a_section_again_changes_only_that_section_and_checks_the_whole(
    finished_run: Path,
) -> None:
    model = scripted(answer(HEADER + NEW_THEME))
    result = asyncio.run(arecompose_section(finished_run, "Theme", note="brighter", seed=7,
                                            model_for=lambda _: model,
                                            settings=Settings(data_dir=finished_run.parent)))
    assert result.ok, result.error
    assert result.out_dir == finished_run.parent / "portrait-section-theme"
    new = (result.out_dir / "tune.abc").read_text()
    old = TUNE
    # Only the theme's music line differs; every other line, the markers too, is as it was.
    assert changed_lines(old, new) == ["D2 F2 A2 d2 | c2 B2 A4 | B2 A2 F2 D2 | E8 |"]
    assert changed_lines(new, old) == [NEW_THEME.split("\n")[1]]
    assert section_names(new) == ["theme", "close"]
    # The whole tune was checked and measured again, and plays (abc2midi is the oracle).
    report = json.loads((result.out_dir / "report.json").read_text())
    assert report["status"] == "done" and report["final_abc"] == new
    [attempt] = report["attempts"]
    assert attempt["kind"] == "section" and attempt["valid"]
    assert attempt["check"]["bars"] == 8 and attempt["metrics"]["bars"] == 8
    assert report["source"] == {"kind": "section", "run": "portrait", "section": "theme",
                                "image": PHOTO.name, "seed": 7}
    assert report["settings"]["seed"] == 7
    assert {"tune.abc", "tune.mid", "score.svg", "report.html", "motivation.md"} <= {
        path.name for path in result.out_dir.iterdir()}
    assert plays(new)
    # The original run is not touched.
    assert (finished_run / "tune.abc").read_text() == TUNE
    # One call; its prompt carries the whole tune, the section as it stands and the note.
    assert len(model.calls) == 1
    prompt = model.texts(0)[-1]
    assert TUNE.strip() in prompt
    assert "D2 F2 A2 d2 | c2 B2 A4 | B2 A2 F2 D2 | E8 |" in prompt
    assert "`% [theme]`" in prompt and '"brighter"' in prompt and "about 4 bars" in prompt
    assert "calm, dignified" in prompt  # what the image showed, from the source run


def test_the_seed_is_the_runs_and_goes_to_the_call(finished_run: Path) -> None:
    sent: list[Any] = []

    class Recording(ScriptedChatModel):
        async def ainvoke(self, *args: Any, **kwargs: Any) -> Any:
            sent.append(kwargs.get("seed"))
            return await super().ainvoke(*args, **kwargs)

    model = Recording(replies=[answer(HEADER + NEW_THEME)])
    out = finished_run.parent / "again"
    asyncio.run(arecompose_section(finished_run, "close", seed=11, out_dir=out,
                                   model_for=lambda _: model))
    assert sent == [Context(seed=11).call_seed(0)]
    assert json.loads((out / "report.json").read_text())["source"]["seed"] == 11


def test_an_unknown_section_is_one_line_listing_those_there_are(finished_run: Path) -> None:
    with pytest.raises(ReworkRefused) as refused:
        asyncio.run(arecompose_section(finished_run, "bridge",
                                       model_for=lambda _: scripted()))
    assert str(refused.value) == ("the tune has no section 'bridge'; its sections are: theme, "
                                  "close")


def test_an_answer_that_does_not_play_is_reported_and_nothing_is_delivered(
    finished_run: Path,
) -> None:
    broken = HEADER + "% [theme]\nA2 d2 [f2 a2 | A8 |\n"
    out = finished_run.parent / "broken"
    result = asyncio.run(arecompose_section(finished_run, "theme", out_dir=out,
                                            model_for=lambda _: scripted(answer(broken))))
    assert not result.ok and result.failure_kind == "no_tune"
    assert result.error is not None and "does not play" in result.error
    assert not (out / "tune.abc").exists()
    assert json.loads((out / "report.json").read_text())["status"] == "failed"


def test_sections_in_voice_blocks_are_composed_again_in_each_voice() -> None:
    section = find_section(TWO_VOICES, "theme")
    assert [part.voice for part in section.parts] == ["1", "2"]
    answer_body = ["V:1", "% [theme]", "f2 e2 d2 c2 | B8 |", "V:2", "% [theme]", "B,,8 | E,8 |"]
    new = replace_section(TWO_VOICES, section, answer_body)
    assert changed_lines(TWO_VOICES, new) == ["D2 F2 A2 d2 | c2 B2 A4 |", "D,8 | A,,8 |"]
    assert "V:1 name=\"Melody\"\n%%MIDI program 73\n% [theme]\nf2 e2 d2 c2 | B8 |" in new
    assert plays(new)


def test_a_marker_above_inline_voices_holds_every_voice() -> None:
    tune = ("X:1\nM:3/4\nL:1/8\nK:C\n% [a]\n[V:1] C2 E2 G2 | c6 |\n[V:2] C,6 | C,6 |\n"
            "% [b]\n[V:1] G2 E2 C2 | C6 |]\n[V:2] G,,6 | C,6 |]\n")
    [first, second] = find_sections(tune)
    assert (first.name, second.name) == ("a", "b")
    assert first.parts[0].voice is None
    new = replace_section(tune, first, ["% [a]", "[V:1] E2 G2 c2 | e6 |", "[V:2] C,6 | G,,6 |"])
    assert changed_lines(tune, new) == ["[V:1] C2 E2 G2 | c6 |", "[V:2] C,6 | C,6 |"]


def test_the_sections_of_a_real_models_tune_are_found_by_their_names() -> None:
    paper = next(path for path in llm_replies() if path.name.startswith("00-"))
    text = paper.read_text(encoding="utf-8")
    assert section_names(text)[:3] == ["intro", "arpeggio (left hand)", "melody (right hand)"]
    assert find_section(text, "  Fade OUT ").name == "fade out"


def test_a_continuation_adds_the_bars_and_keeps_the_original_ones(tmp_path: Path) -> None:
    source = tmp_path / "dignity.abc"
    source.write_text(TUNE, encoding="utf-8")
    abc = read_tune_file(source)
    model = scripted(answer(HEADER + NEW_BARS))
    result = asyncio.run(acontinue_tune(abc, 4, name=source.name, out_dir=tmp_path / "out",
                                        seed=3, model_for=lambda _: model))
    assert result.ok, result.error
    new = (tmp_path / "out" / "tune.abc").read_text()
    # The original lines are a prefix of the new tune, but for the final bar line, which the
    # tune now goes past.
    assert new.startswith(TUNE.replace("D8 |]", "D8 |").rstrip("\n") + "\n" + NEW_BARS)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["source"] == {"kind": "continuation", "file": "dignity.abc",
                                "from_midi": False, "seed": 3, "bars_asked": 4,
                                "bars_added": 4}
    assert report["attempts"][0]["check"]["bars"] == 12
    prompt = model.texts(0)[-1]
    assert TUNE.strip() in prompt and "8 bars long" in prompt and "for 4 more bars" in prompt
    assert plays(new)


def test_a_midi_file_is_continued_through_the_real_conversion(tmp_path: Path) -> None:
    source = tmp_path / "dignity.mid"
    source.write_bytes(abc_to_midi(TUNE))
    abc = read_tune_file(source)
    assert abc.startswith("X:") and "K:" in abc  # midi2abc's tune, checked and filtered
    converted_header = "\n".join(abc.split("\n")[:abc.split("\n").index(
        next(line for line in abc.split("\n") if line.startswith("K:"))) + 1])
    model = scripted(answer(converted_header + "\n" + NEW_BARS))
    result = asyncio.run(acontinue_tune(abc, 4, name=source.name, out_dir=tmp_path / "out",
                                        midi=True, model_for=lambda _: model))
    assert result.ok, result.error
    new = (tmp_path / "out" / "tune.abc").read_text()
    kept = [line for line in abc.rstrip("\n").split("\n")]
    assert new.split("\n")[:len(kept) - 1] == kept[:-1]
    assert json.loads((tmp_path / "out" / "report.json").read_text())["source"]["from_midi"]


def test_a_tune_that_does_not_play_is_refused_before_any_call(tmp_path: Path) -> None:
    source = tmp_path / "broken.abc"
    source.write_text(TUNE.replace("B2 A2 F2 D2 |", "B2 A2 [F2 D2 |"), encoding="utf-8")
    with pytest.raises(ReworkRefused, match=r"^broken is not a tune that plays: line \d+"):
        read_tune_file(source)


def test_append_bars_ends_the_tune_where_it_ended_before_and_adds_after() -> None:
    new, changes = append_bars(TUNE, ["A8 |]"])
    assert new.split("\n")[-3:] == ["F2 A2 d2 f2 | e2 d2 c4 | d2 A2 F2 E2 | D8 |", "A8 |]", ""]
    assert changes == ["line 10: the final bar line |] became | as the tune goes on"]


# ---- the commands ------------------------------------------------------------------------------

@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """`img2music` in this process, the scripted model behind it."""
    monkeypatch.setenv("IMG2MUSIC_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    models: list[ScriptedChatModel] = []

    def invoke(replies: list[str], *arguments: str) -> Any:
        model = scripted(*replies)
        models.append(model)
        monkeypatch.setattr("img2music.pipeline.rework.chat_model",
                            lambda context, settings=None: model)
        return CliRunner().invoke(app, list(arguments))

    yield invoke
    get_settings.cache_clear()


def test_the_section_command_writes_a_new_run_and_says_where(cli: Any,
                                                             finished_run: Path) -> None:
    done = cli([answer(HEADER + NEW_THEME)], "section", str(finished_run), "--section", "theme",
               "--seed", "5", "--out", str(finished_run.parent / "cli-theme"))
    assert done.exit_code == 0, done.output
    assert str(finished_run.parent / "cli-theme" / "tune.abc") in done.output
    unknown = cli([], "section", str(finished_run), "--section", "bridge")
    assert unknown.exit_code == 2
    assert "error: the tune has no section 'bridge'; its sections are: theme, close" in (
        " ".join(unknown.output.split()))
    no_tune = cli([answer("I cannot write music today.")], "section", str(finished_run),
                  "--section", "theme", "--out", str(finished_run.parent / "cli-none"))
    assert no_tune.exit_code == 1


def test_the_continue_command_continues_a_file(cli: Any, tmp_path: Path) -> None:
    source = tmp_path / "dignity.abc"
    source.write_text(TUNE, encoding="utf-8")
    done = cli([answer(HEADER + NEW_BARS)], "continue", str(source), "--bars", "4")
    assert done.exit_code == 0, done.output
    folder = tmp_path / "data" / "runs" / "dignity-continued"
    assert (folder / "tune.abc").read_text().endswith(NEW_BARS)
    missing = cli([], "continue", str(tmp_path / "nothing.mid"), "--bars", "4")
    assert missing.exit_code == 2 and "nothing.mid cannot be read" in missing.output


# ---- over HTTP ---------------------------------------------------------------------------------

def tune_header(prompt: str) -> str:
    """The header of the tune a prompt shows (its X: line to its K: line)."""
    lines = prompt.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("X:"))
    end = next(i for i, line in enumerate(lines) if line.startswith("K:") and i > start)
    return "\n".join(lines[start:end + 1]) + "\n"


def reworking(body: dict[str, Any]) -> str:
    """The scripted VLM: a composition as in the graph's tests, then new music as asked."""
    text = last_user_text(body)
    if "Compose the section" in text:
        return answer(tune_header(text) + NEW_THEME)
    if "Continue it for" in text:
        return answer(tune_header(text) + NEW_BARS)
    return reply_for(body)


def followed(server: Served, accepted: httpx.Response) -> tuple[list[dict[str, Any]],
                                                                dict[str, Any]]:
    """The new run's events until it ends, and its summary, as a client follows a run."""
    assert accepted.status_code == 202, accepted.text
    run = accepted.json()
    events: list[dict[str, Any]] = []
    with httpx.stream("GET", run["events"], timeout=120) as stream:
        events = [json.loads(line[6:]) for line in stream.iter_lines()
                  if line.startswith("data: ")]
    return events, httpx.get(run["run"], timeout=30).json()


def test_a_section_again_and_a_continuation_over_http(tmp_path: Path) -> None:
    with img2music_server(tmp_path, responder=reworking) as server:
        completion = server.client.chat.completions.create(model="img2music",
                                                           messages=image_message())
        composed = completion.model_extra["img2music"]  # type: ignore[index]
        assert composed["sections"] == ["theme", "close"]
        url = f"{server.url}/v1/runs/{composed['run_id']}/sections"
        calls = len(server.vlm.requests)

        events, summary = followed(server, httpx.post(url, json={"section": "theme",
                                                                  "seed": 7}))
        assert [e["type"] for e in events][:2] == ["queued", "started"]
        assert [e["node"] for e in events if e["type"] == "node"] == [
            "compose", "parse_check", "evaluate"]
        assert events[-1]["type"] == "done"
        assert summary["status"] == "done" and summary["seed"] == 7
        assert summary["source"] == {"kind": "section", "run": composed["run_id"],
                                     "section": "theme", "image": "image.jpg", "seed": 7}
        assert changed_lines(composed["abc"], summary["abc"]) == [
            "D2 F2 A2 d2 | c2 B2 A4 | B2 A2 F2 D2 | E8 |"]
        assert summary["sections"] == ["theme", "close"] and summary["metrics"]["bars"] == 8
        files = summary["files"]
        assert httpx.get(files["tune.abc"]).text == summary["abc"]
        assert httpx.get(files["tune.mid"]).content.startswith(b"MThd")
        assert b"<html" in httpx.get(files["report.html"], timeout=120).content
        assert len(server.vlm.requests) == calls + 1  # one call for the section
        sent = server.vlm.requests[-1]
        assert sent["seed"] == Context(seed=7).call_seed(0)
        assert "grammar" in sent["structured_outputs"]  # the ABC grammar, as for compositions
        report = httpx.get(files["report.json"]).json()
        assert report["attempts"][0]["constrained"]  # and the answer was written under it

        unknown = httpx.post(url, json={"section": "bridge"})
        assert unknown.status_code == 400
        assert unknown.json()["error"]["message"] == (
            "the tune has no section 'bridge'; its sections are: theme, close")
        assert httpx.post(url, content=b"section=theme").status_code == 415
        assert httpx.post(f"{server.url}/v1/runs/{'0' * 20}/sections",
                          json={"section": "theme"}).status_code == 404
        assert len(server.vlm.requests) == calls + 1  # no call for a refusal

        continuations = f"{server.url}/v1/continuations"
        _, continued = followed(server, httpx.post(continuations, json={
            "abc": "%%abc-include /etc/passwd\n" + TUNE, "bars": 4, "name": "dignity.abc"}))
        assert continued["status"] == "done", continued["failure"]
        assert continued["abc"].endswith(NEW_BARS)
        assert "passwd" not in last_user_text(server.vlm.requests[-1])  # filtered first
        assert continued["source"]["bars_added"] == 4

        midi = base64.b64encode(abc_to_midi(TUNE)).decode()
        _, from_midi = followed(server, httpx.post(continuations, json={
            "midi": midi, "bars": 4, "name": "dignity.mid"}))
        assert from_midi["status"] == "done" and from_midi["source"]["from_midi"]
        assert from_midi["abc"].endswith(NEW_BARS)

        for body, said in (({"bars": 4}, "send the tune as `abc`"),
                           ({"midi": "not base64!", "bars": 4}, "midi is not base64"),
                           ({"abc": TUNE, "bars": 0}, "bars: Input should be greater"),
                           ({"abc": "no music here", "bars": 4}, "is not a tune that plays")):
            refused = httpx.post(continuations, json=body)
            assert refused.status_code == 400 and said in refused.json()["error"]["message"]


def test_with_a_key_the_new_routes_need_it(tmp_path: Path) -> None:
    with img2music_server(tmp_path, api_key=KEY) as server:
        for url in (f"{server.url}/v1/runs/{'0' * 20}/sections", f"{server.url}/v1/continuations"):
            assert httpx.post(url, json={"section": "theme"}).status_code == 401
