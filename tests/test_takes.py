"""Takes: several candidates for one image, composed at once, sharing one description and one
retrieval, each with its own seed; every take reported, and the user's pick recorded."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from playwright.sync_api import Browser, expect
from pydantic import ConfigDict, Field

from img2music.graph.context import Context
from img2music.graph.local_vlm import LocalChatModel, LocalVLM
from img2music.pipeline.runs import Composition, compose
from img2music.pipeline.takes import PickRefused, pick_take
from img2music.tools.abc.check import check_abc
from tests.needs import needs_chromium
from tests.openai_server import scripted_server
from tests.test_compose_cli import PHOTO, img2music, respond
from tests.test_constrained import one_thread, vlm  # noqa: F401 - fixtures, shared
from tests.test_graph import DESCRIPTION, TUNE, Examples, answer
from tests.test_page import BLOB_URL, WAIT_MS, browser, page_bytes, visit  # noqa: F401
from tests.test_server import KEY, image_message, img2music_server

TAKES = 3


class MeetingModel(BaseChatModel):
    """Describes, and answers each compose call with the tune, but only once `parties` compose
    calls are waiting at once: takes composed one after another would never get an answer.
    Records what each call was (describe or compose) and the seed it was sent."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    parties: int
    calls: list[tuple[str, int | None]] = Field(default_factory=list)
    meeting: asyncio.Barrier | None = None

    @property
    def _llm_type(self) -> str:
        return "meeting"

    def _generate(self, messages: list[BaseMessage], stop: Sequence[str] | None = None,
                  run_manager: Any = None, **kwargs: Any) -> ChatResult:
        raise AssertionError("the graph calls its model asynchronously")

    async def _agenerate(self, messages: list[BaseMessage], stop: Sequence[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None,
                         **kwargs: Any) -> ChatResult:
        text = str(messages[-1].content)
        kind = "describe" if "Describe this image" in text else "compose"
        self.calls.append((kind, kwargs.get("seed")))
        if kind == "compose":
            if self.meeting is None:
                self.meeting = asyncio.Barrier(self.parties)
            # A guard against a hang, not a timing assert: alone, a call never gets through.
            await asyncio.wait_for(self.meeting.wait(), timeout=120)
        reply = DESCRIPTION if kind == "describe" else answer(TUNE)
        message = AIMessage(content=reply, usage_metadata={
            "input_tokens": 100, "output_tokens": len(reply) // 4,
            "total_tokens": 100 + len(reply) // 4})
        return ChatResult(generations=[ChatGeneration(message=message)])


def compose_takes(out: Path, seed: int, takes: int = TAKES) -> tuple[Composition, MeetingModel,
                                                                     Examples]:
    model, examples = MeetingModel(parties=takes), Examples()
    result = compose(PHOTO, out_dir=out, takes=takes, seed=seed, explain="none", refine=False,
                     model_for=lambda _: model, retriever_for=lambda _: examples)
    return result, model, examples


def test_takes_compose_at_once_share_one_description_and_retrieval_and_are_all_reported(
    tmp_path: Path,
) -> None:
    result, model, examples = compose_takes(tmp_path / "run", seed=7)
    assert result.ok and len(result.takes) == TAKES, result.summary()
    assert [kind for kind, _ in model.calls].count("describe") == 1
    assert [kind for kind, _ in model.calls].count("compose") == TAKES
    assert len(examples.queries) == 1
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["status"] == "done" and report["picked"] is None
    assert report["description"] and len(report["examples"]) == 2
    assert report["usage"]["describe"]["calls"] == 1
    assert report["usage"]["compose"]["calls"] == TAKES
    for number, take in enumerate(report["takes"], 1):
        folder = tmp_path / "run" / f"take-{number}"
        assert take["take"] == number and take["folder"] == folder.name
        assert take["status"] == "done" and take["fault_count"] == 0 and take["faults"] == []
        assert check_abc(take["final_abc"]).ok
        assert take["metrics"]["pitch_range"] is not None
        assert (folder / "tune.abc").read_text() == take["final_abc"]
        assert {"tune.abc", "tune.mid", "report.json"} <= set(take["files"])
        own = json.loads((folder / "report.json").read_text())
        assert own["settings"]["seed"] == take["seed"] and own["take"] == number
        assert own["description"] == report["description"]  # the shared one, not asked again
    assert not (tmp_path / "run" / "tune.abc").exists()


def test_each_take_has_its_own_seed_the_same_for_the_same_run_seed(tmp_path: Path) -> None:
    first, model, _ = compose_takes(tmp_path / "a", seed=7)
    seeds = [take["seed"] for take in first.report["takes"]]
    assert seeds[0] == 7 and len(set(seeds)) == TAKES  # the first take is the run's own seed
    assert seeds == [Context(seed=7).take_seed(take) for take in range(TAKES)]
    sent = sorted(seed or 0 for kind, seed in model.calls if kind == "compose")
    assert sent == sorted(Context(seed=seed).call_seed(1) for seed in seeds)
    again, model_again, _ = compose_takes(tmp_path / "b", seed=7)
    assert [take["seed"] for take in again.report["takes"]] == seeds
    assert sorted(model_again.calls, key=str) == sorted(model.calls, key=str)
    other, _, _ = compose_takes(tmp_path / "c", seed=8)
    assert set(take["seed"] for take in other.report["takes"]).isdisjoint(seeds)


def test_a_pick_is_recorded_and_only_a_take_with_a_tune_can_be_picked(tmp_path: Path) -> None:
    compose_takes(tmp_path / "run", seed=3, takes=2)
    assert pick_take(tmp_path / "run", 2)["picked"] == 2
    assert json.loads((tmp_path / "run" / "report.json").read_text())["picked"] == 2
    with pytest.raises(PickRefused, match="takes 1 to 2"):
        pick_take(tmp_path / "run", 3)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    report["takes"][0].update(status="failed", failure="no valid tune")
    (tmp_path / "run" / "report.json").write_text(json.dumps(report))
    with pytest.raises(PickRefused, match="no tune to pick"):
        pick_take(tmp_path / "run", 1)
    single = compose(PHOTO, out_dir=tmp_path / "one", seed=3, explain="none", refine=False,
                     model_for=lambda _: MeetingModel(parties=1),
                     retriever_for=lambda _: Examples())
    assert single.ok and not single.takes and "takes" not in single.report
    with pytest.raises(PickRefused, match="nothing to pick"):
        pick_take(tmp_path / "one", 1)


def test_with_the_tiny_local_model_the_same_seed_gives_the_same_takes(
    vlm: LocalVLM, tmp_path: Path,  # noqa: F811
) -> None:
    def raw_takes(out: Path, seed: int) -> list[str]:
        result = compose(PHOTO, out_dir=out, takes=TAKES, seed=seed, rag=False, max_repairs=0,
                         refine=False, explain="none", vlm_grammar="off", vlm_max_tokens=16,
                         model_for=lambda _: LocalChatModel(vlm=vlm, max_new_tokens=16))
        assert len(result.takes) == TAKES
        return [json.loads((take.out_dir / "report.json").read_text())["attempts"][0]["raw"]
                for take in result.takes]

    takes = raw_takes(tmp_path / "a", seed=7)
    assert len(set(takes)) == TAKES  # each take sampled with its own seed
    assert raw_takes(tmp_path / "b", seed=7) == takes


def test_the_cli_composes_three_takes_and_records_a_pick(tmp_path: Path) -> None:
    with scripted_server(respond) as scripted:
        result = img2music(tmp_path, scripted.url, "compose", str(PHOTO), "--out",
                           str(tmp_path / "out"), "--takes", "3", "--seed", "7",
                           "--no-rag", "--explain", "none", "--refine-rounds", "0")
    assert result.returncode == 0, result.stdout + result.stderr
    run = tmp_path / "out" / "grace_hopper"
    for number in (1, 2, 3):
        assert f"take {number}:" in result.stdout
        assert (run / f"take-{number}" / "tune.abc").is_file()
    describes = [body for body in scripted.requests if "Describe this image" in str(body)]
    assert len(describes) == 1 and len(scripted.requests) == 1 + 3
    assert len({body["seed"] for body in scripted.requests}) == 4
    picked = img2music(tmp_path, scripted.url, "pick", str(run), "2")
    assert picked.returncode == 0, picked.stderr
    assert json.loads((run / "report.json").read_text())["picked"] == 2


def test_http_n_3_answers_three_choices_streams_them_by_index_and_records_a_pick(
    tmp_path: Path,
) -> None:
    with img2music_server(tmp_path, server_max_concurrent_runs=3) as server:
        completion = server.client.chat.completions.create(
            model="img2music", messages=image_message(), n=3, seed=7,
            extra_body={"img2music": {"refine_rounds": 0}})
        extension: dict[str, Any] = completion.model_extra["img2music"]  # type: ignore[index]
        assert [choice.index for choice in completion.choices] == [0, 1, 2]
        assert all("```abc\nX:1" in (choice.message.content or "")
                   for choice in completion.choices)
        assert len(server.examples.queries) == 1
        describes = [body for body in server.vlm.requests if "Describe this image" in str(body)]
        assert len(describes) == 1 and len(server.vlm.requests) == 4
        takes = extension["takes"]
        assert [take["take"] for take in takes] == [1, 2, 3] and extension["picked"] is None
        assert takes[0]["seed"] == 7 and len({take["seed"] for take in takes}) == 3
        headers = {"Authorization": f"Bearer {KEY}"}
        with httpx.Client(headers=headers, timeout=120) as http:
            tune = http.get(takes[1]["files"]["tune.abc"])
            assert tune.status_code == 200 and tune.text == takes[1]["abc"]
            assert "/takes/2/" in takes[1]["files"]["tune.ogg"]
            page = http.get(takes[0]["files"]["report.html"])  # made when asked, from the image
            assert page.status_code == 200 and "Dignity" in page.text
            run = f"{server.url}/v1/runs/{extension['run_id']}"
            picked = http.post(f"{run}/pick", json={"take": 3})
            assert picked.status_code == 200 and picked.json()["picked"] == 3
            assert http.get(run).json()["picked"] == 3
            refused = http.post(f"{run}/pick", json={"take": 4})
            assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_take"
            assert http.post(f"{run}/pick", content=b"take=1").status_code == 415
        stream = server.client.chat.completions.create(
            model="img2music", messages=image_message(), stream=True,
            extra_body={"img2music": {"refine_rounds": 0, "takes": 2}})
        chunks = list(stream)
    finished = sorted(c.choices[0].index for c in chunks
                      if c.choices and c.choices[0].finish_reason == "stop")
    assert finished == [0, 1]
    answers = {c.choices[0].index: c.choices[0].delta.content for c in chunks
               if c.choices and c.choices[0].delta.content}
    assert set(answers) == {0, 1} and all("X:1" in text for text in answers.values())
    composed = {c.choices[0].index for c in chunks if c.choices
                and ((c.model_extra or {}).get("img2music") or {}).get("node") == "compose"}
    assert composed == {0, 1}  # each take's progress comes with its choice's index
    result = (chunks[-1].model_extra or {})["img2music"]
    assert result["type"] == "result" and len(result["takes"]) == 2


@needs_chromium
def test_the_page_shows_the_takes_side_by_side_with_audio_and_records_the_pick(
    browser: Browser, tmp_path: Path,  # noqa: F811
) -> None:
    with img2music_server(tmp_path) as server, \
            visit(browser, server, tmp_path, viewport={"width": 1280, "height": 900}) as seen:
        page = seen.page
        page.set_input_files("#image", str(PHOTO))
        page.get_by_text("Advanced").click()
        page.get_by_label("Refinement rounds").fill("0")
        page.get_by_label("Takes (candidates to choose from)").fill("2")
        page.get_by_role("button", name="Compose").click()
        cards = page.locator("#takes-list > li")
        expect(cards).to_have_count(2, timeout=WAIT_MS)
        expect(page.locator("#status")).to_contain_text("Done")
        for number in (1, 2):
            card = page.locator(f'#takes-list > li[data-take="{number}"]')
            expect(card.get_by_role("heading")).to_have_text(f"Take {number}: Dignity")
            expect(card.locator("audio")).to_have_attribute("src", BLOB_URL)
            expect(card.locator("img.score")).to_have_attribute("src", BLOB_URL)
        audio = page.locator('#takes-list > li[data-take="2"] audio')
        assert page_bytes(page, audio.get_attribute("src") or "")[:4] == b"OggS"
        assert page.locator("#log li").filter(has_text="Take 2: Compose done").count() == 1
        page.locator('#takes-list > li[data-take="2"]').get_by_role(
            "button", name="Pick this take").click()
        expect(page.locator('#takes-list > li[data-take="2"]')).to_have_attribute(
            "data-picked", "")
        expect(page.locator("#takes-status")).to_have_text(
            "You picked take 2; it is recorded in the run's report.")
        seen.shot("takes-picked")
        (run,) = list(server.runs.iterdir())
        assert json.loads((run / "report.json").read_text())["picked"] == 2
