"""`img2music eval`: variants that really change the run, a blind judge read robustly, bootstrap
intervals, resuming, prompt A/B comparisons and the files a researcher reads."""

from __future__ import annotations

import asyncio
import json
import math
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from matplotlib import cbook
from typer.testing import CliRunner

from img2music.cli.main import app
from img2music.eval.judge import Judge, parse_score, questions
from img2music.eval.runner import EvalOptions, EvalResult, run_eval
from img2music.eval.stats import bootstrap, mean_ci, paired_ci, ratio_ci
from img2music.eval.variants import (
    BUILTIN,
    GRAPH_PROMPTS,
    VariantError,
    parse_prompt_option,
    resolve_variants,
)
from img2music.prompt_files import shipped_prompts
from img2music.settings import Settings, get_settings
from tests.openai_server import ScriptedServer, last_user_text, scripted_server
from tests.scripted import ScriptedChatModel
from tests.serving import refusing_port
from tests.test_graph import REFINED, TUNE, Examples, answer

PHOTOS = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png")
LIVELY = TUNE.replace("T:Dignity", "T:Lively")


@pytest.fixture(autouse=True)
def tiny_clip(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.setenv("IMG2MUSIC_CLIP_MODEL", "img2music-tiny")
    monkeypatch.setenv("IMG2MUSIC_CLIP_PRETRAINED", "none")
    monkeypatch.setenv("IMG2MUSIC_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for name in PHOTOS:
        shutil.copy(cbook.get_sample_data(name, asfileobj=False), folder / name)
    return folder


def composer(body: dict[str, Any]) -> str:
    text = last_user_text(body)
    if "Describe this image" in text:
        return "A calm portrait in warm light."
    if "Metrics of your tune" in text:
        return answer(REFINED)
    prompt = json.dumps(body["messages"])
    return answer(LIVELY if "Write a lively tune" in prompt else TUNE)


def judge(body: dict[str, Any]) -> str:
    """Scores that depend on the tune alone: the judge cannot know the variant."""
    text = last_user_text(body)
    if "Imagine the picture" in text:
        return "A quiet harbour at dusk, grey light, a slow swell."
    score = 6 if "T:Dignity, refined" in text or "T:Lively" in text else 4
    if "emotion of the music" in text:
        return f"<think>mood</think>I would rate it {score - 1} out of 7: the moods agree."
    if "How good is the harmony" in text:
        return "Lovely harmony, really."  # no score at all
    return json.dumps({"reason": "a plain, well-formed tune", "score": score})


def message_texts(body: dict[str, Any]) -> str:
    """Every text the judge was sent, images left out (base64 can spell anything)."""
    texts = []
    for message in body["messages"]:
        content = message["content"]
        parts = [content] if isinstance(content, str) else [
            part.get("text", "") for part in content if part.get("type") == "text"]
        texts.extend(parts)
    return "\n".join(texts)


def image_parts(body: dict[str, Any]) -> int:
    return sum(1 for m in body["messages"] if isinstance(m["content"], list)
               for part in m["content"] if part.get("type") == "image_url")


def evaluate(tmp_path: Path, images: Path, composer_server: ScriptedServer,
             judge_server: ScriptedServer, variants: list[str], *, out: str = "results",
             prompts: Sequence[tuple[str, Path]] = (), **options: Any) -> EvalResult:
    settings = Settings(vlm_base_url=composer_server.url, vlm_model=composer_server.model,
                        judge_base_url=judge_server.url, judge_model=judge_server.model,
                        vlm_retries=0, data_dir=tmp_path / "data")
    chosen = resolve_variants(variants, prompts=prompts)
    return run_eval(EvalOptions(images=[images], out=tmp_path / out, variants=chosen,
                                **{"repeats": 2, "concurrency": 2, **options}),
                    settings=settings, retriever_for=lambda _: Examples())


@pytest.fixture
def servers() -> Iterator[tuple[ScriptedServer, ScriptedServer]]:
    with scripted_server(composer) as c, scripted_server(judge, model="judge-model") as j:
        yield c, j


def test_variants_change_the_path_and_the_judge_rates_blind(
    tmp_path: Path, images: Path, servers: tuple[ScriptedServer, ScriptedServer],
) -> None:
    composer_server, judge_server = servers
    result = evaluate(tmp_path, images, composer_server, judge_server,
                      ["full", "no-rag", "no-refine", "caption-only"], concurrency=1)
    assert result.errors == [] and result.composed == 8
    items = [json.loads(line) for line in (tmp_path / "results" / "items.jsonl").open()]
    paths = {item["variant"]: item["path"] for item in items}
    assert paths["full"] == ["describe", "retrieve", "compose", "parse_check", "evaluate",
                             "compose", "parse_check", "evaluate", "explain"]
    assert paths["no-rag"] == [node for node in paths["full"] if node != "retrieve"]
    assert paths["no-refine"] == ["describe", "retrieve", "compose", "parse_check", "evaluate",
                                  "explain"]
    assert paths["caption-only"] == ["describe", "compose", "parse_check", "evaluate",
                                     "explain"]
    composes = [r for r in composer_server.requests
                if "Compose an original piece" in last_user_text(r)]
    blind = [r for r in composes if "know only from its description" in message_texts(r)]
    assert len(composes) == 8 and len(blind) == 2
    assert all(image_parts(r) == 0 for r in blind)
    assert all(image_parts(r) == 1 for r in composes if r not in blind)

    # blind: no variant name, one question per fresh conversation, image and tune each time
    scored = [r for r in judge_server.requests if "Rate it from 1 to 7" in message_texts(r)]
    assert len(scored) == 8 * 8 * 2  # tunes × questions × repeats
    for request in judge_server.requests:
        text = message_texts(request).lower()
        assert not any(name in text for name in ("no-rag", "no-refine", "caption-only",
                                                 "variant", "full"))
        assert [m["role"] for m in request["messages"]] in (["system", "user"], ["user"])
    assert all(image_parts(r) == 1 and message_texts(r).count("Rate it from 1 to 7") == 1
               and "X:1" in message_texts(r) for r in scored)
    asked = [next(q.key for q in questions() if q.question in message_texts(r)) for r in scored]
    assert asked != sorted(asked, key=[q.key for q in questions()].index)  # shuffled

    summary = json.loads((tmp_path / "results" / "summary.json").read_text())
    rows = {row["name"]: row["estimates"] for row in summary["variants"]}
    assert rows["full"]["quality_overall"]["value"] == 6  # the refined tune
    assert rows["no-refine"]["quality_overall"]["value"] == 4
    assert rows["full"]["emotion"]["value"] == 5  # read from prose
    assert rows["full"]["harmony"]["value"] is None  # never a guess
    assert rows["full"]["quality_avg"]["value"] == 6
    assert rows["no-refine"]["calls_per_valid"]["value"] == 2
    assert rows["full"]["calls_per_valid"]["value"] == 3
    assert rows["full"]["refine_rounds"]["value"] == 1 and rows["no-refine"]["refine_rounds"][
        "value"] == 0
    assert rows["full"]["valid_rate"] == {"value": 1.0, "low": 1.0, "high": 1.0, "n": 2}
    assert rows["full"]["pitch_range"]["value"] > 0
    assert -1 <= rows["full"]["clip_proxy"]["value"] <= 1
    assert summary["paired"]["no-refine"]["quality_overall"]["value"] == -2

    markdown = (tmp_path / "results" / "summary.md").read_text()
    for name in ("full", "no-rag", "no-refine", "caption-only"):
        assert f"| `{name}` |" in markdown
    assert "| Variant | Quality: Overall | Quality: Melody" in markdown
    assert "Consistency: Emotion | Consistency: Average | n |" in markdown
    assert "**6.00 [6.00, 6.00]**" in markdown  # best in bold, with its interval
    assert "16 judge answers had no readable 1–7 score" in markdown
    assert "(proxy)" in markdown and "judge-model" in markdown
    assert (tmp_path / "results" / "scores.png").read_bytes().startswith(b"\x89PNG")
    rows_csv = (tmp_path / "results" / "items.csv").read_text().splitlines()
    assert len(rows_csv) == 9 and rows_csv[0].startswith("variant,image,")


def test_a_rerun_resumes_and_redoes_only_what_is_missing(
    tmp_path: Path, images: Path, servers: tuple[ScriptedServer, ScriptedServer],
) -> None:
    composer_server, judge_server = servers
    first = evaluate(tmp_path, images, composer_server, judge_server, ["no-rag-no-refine"],
                     repeats=1, clip=False)
    assert (first.composed, first.judge_calls) == (2, 16)
    calls = (len(composer_server.requests), len(judge_server.requests))

    again = evaluate(tmp_path, images, composer_server, judge_server, ["no-rag-no-refine"],
                     repeats=1, clip=False)
    assert (again.composed, again.reused, again.judge_calls) == (0, 2, 0)
    assert (len(composer_server.requests), len(judge_server.requests)) == calls

    # an interruption: the second run's line and the last judgements never got written
    runs = tmp_path / "results" / "runs.jsonl"
    runs.write_text(runs.read_text().splitlines()[0] + "\n{\"run_id\": \"torn", encoding="utf-8")
    judgments = tmp_path / "results" / "judgments.jsonl"
    judgments.write_text("".join(judgments.read_text().splitlines(keepends=True)[:12]),
                         encoding="utf-8")
    resumed = evaluate(tmp_path, images, composer_server, judge_server,
                       ["no-rag-no-refine", "caption-only"], repeats=1, clip=False)
    assert (resumed.composed, resumed.reused) == (1 + 2, 1)
    assert resumed.judge_calls == 4 + 2 * 8  # the 4 lost answers, and caption-only's
    items = (tmp_path / "results" / "items.jsonl").read_text().splitlines()
    assert len(items) == 4


def test_prompt_sets_are_compared_image_by_image(
    tmp_path: Path, images: Path, servers: tuple[ScriptedServer, ScriptedServer],
) -> None:
    folders = {}
    for name in ("base", "try"):
        folder = tmp_path / name
        folder.mkdir()
        for file in GRAPH_PROMPTS:  # no judge prompts: the judge reads the shipped ones
            shutil.copy(shipped_prompts() / file, folder / file)
        folders[name] = folder
    compose_prompt = folders["try"] / "compose.j2"
    compose_prompt.write_text(compose_prompt.read_text() + "\nWrite a lively tune.\n")
    composer_server, judge_server = servers
    result = evaluate(tmp_path, images, composer_server, judge_server, ["no-rag-no-refine"],
                      prompts=[("base", folders["base"]), ("try", folders["try"])], repeats=1)
    assert result.errors == []
    summary = result.summary
    assert [row.name for row in summary.variants] == ["base", "try"]
    assert summary.reference == "base"
    base_hash, try_hash = (row.prompt_hash for row in summary.variants)
    assert base_hash != try_hash
    difference = summary.paired["try"]["quality_avg"]
    assert (difference.value, difference.low, difference.high, difference.n) == (2, 2, 2, 2)
    assert summary.paired["try"]["valid_rate"].value == 0
    assert f"`{try_hash}` vs `{base_hash}`" in result.markdown
    assert "+2.00 [+2.00, +2.00]" in result.markdown
    assert "## Paired differences against `base`" in result.markdown


def test_the_command_line_fails_bad_items_in_one_line_and_goes_on(
    tmp_path: Path, images: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    (images / "notes.png").write_text("not an image", encoding="utf-8")
    with scripted_server(composer) as server, refusing_port() as judge_port:
        for name, value in {"IMG2MUSIC_VLM_BASE_URL": server.url,
                            "IMG2MUSIC_VLM_MODEL": server.model,
                            "IMG2MUSIC_JUDGE_BASE_URL": f"http://127.0.0.1:{judge_port}/v1",
                            "IMG2MUSIC_VLM_RETRIES": "0"}.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        result = CliRunner().invoke(app, [
            "eval", "--images", str(images), "--variants", "no-rag-no-refine,caption-only",
            "--out", str(tmp_path / "cli"), "--repeats", "1", "--no-clip"])
    assert result.exit_code == 1, result.output
    assert "notes.png: " in result.stderr and "not a usable image" in result.stderr
    refused = [line for line in result.stderr.splitlines() if "refused the connection" in line]
    assert len(refused) == 4  # each tune's judging fails once, in one line
    assert all("the judge endpoint http://127.0.0.1" in line for line in refused)
    assert "Machine judge (1–7)" in result.stdout and "caption-only" in result.stdout
    assert "summary.md: " in result.stdout
    assert len((tmp_path / "cli" / "runs.jsonl").read_text().splitlines()) == 4
    unknown = CliRunner().invoke(app, ["eval", "--images", str(images), "--variants", "nope"])
    assert unknown.exit_code == 2 and "unknown variant(s) nope" in unknown.stderr


@pytest.mark.parametrize(("reply", "score", "how"), [
    ('{"reason": "clear form", "score": 5}', 5, "json"),
    ('<think>hmm, 3 or 4</think>```json\n{"reason": "ok", "score": "4"}\n```', 4, "json"),
    ("Score: 6. A strong melody.", 6, "prose"),
    ("I'd rate it 3 out of 7.", 3, "prose"),
    ("6/7 — memorable.", 6, "prose"),
    ("5", 5, "prose"),
    ('{"reason": "superb", "score": 9}', None, "json"),
    ("Rating: 0", None, "prose"),
    ("A beautiful tune with 2 voices and 3 sections.", None, None),
    ("", None, None),
    ('{"score": ', None, None),
])
def test_judge_answers_are_read_in_json_prose_or_not_at_all(
    reply: str, score: float | None, how: str | None,
) -> None:
    parsed = parse_score(reply)
    assert (parsed.value, parsed.parsed_by) == (score, how)


def test_each_question_is_a_fresh_conversation_with_the_shipped_judge_prompts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    mine = tmp_path / "my_prompts"
    mine.mkdir()
    (mine / "judge.j2").write_text("Say 7. {{ abc }}")  # a prompt set must not change the judge
    monkeypatch.setenv("IMG2MUSIC_PROMPTS_DIR", str(mine))
    get_settings.cache_clear()
    model = ScriptedChatModel(replies=['{"reason": "x", "score": 3}', "Score: 5"])
    judge_ = Judge(model, "http://judge.invalid/v1")
    first, second = questions()[0], questions()[-1]
    assert asyncio.run(judge_.ask("data:image/png;base64,AAAA", TUNE, first)).score.value == 3
    assert asyncio.run(judge_.ask("data:image/png;base64,AAAA", TUNE, second)).score.value == 5
    for call, question in zip(range(2), (first, second), strict=True):
        texts = model.texts(call)
        assert len(texts) == 2 and "Say 7" not in texts[1]
        assert question.question in texts[1] and "T:Dignity" in texts[1]
        others = [q.question for q in questions() if q != question]
        assert not any(other in texts[1] for other in others)


def test_the_eight_questions_are_the_human_studys() -> None:
    labels = [(q.group, q.label) for q in questions()]
    assert labels == [("quality", "Overall"), ("quality", "Melody"), ("quality", "Rhythm"),
                      ("quality", "Authenticity"), ("quality", "Harmony"),
                      ("consistency", "Overall"), ("consistency", "Semantics"),
                      ("consistency", "Emotion")]


def test_bootstrap_intervals_on_known_data() -> None:
    assert mean_ci([4.0] * 10) == bootstrap([4.0] * 10)
    constant = mean_ci([4.0] * 10)
    assert (constant.value, constant.low, constant.high, constant.n) == (4, 4, 4, 10)
    coins = mean_ci([0.0, 1.0] * 50, seed=1)
    assert coins.value == 0.5
    # the normal approximation: 0.5 ± 1.96 × 0.05
    assert coins.low == pytest.approx(0.402, abs=0.02)
    assert coins.high == pytest.approx(0.598, abs=0.02)
    assert mean_ci([0.0, 1.0] * 50, seed=1) == coins  # seeded
    one = mean_ci([5.0, None])
    assert (one.value, one.n) == (5, 1) and math.isnan(one.low) and one.cell() == "5.00"
    assert mean_ci([]).cell() == "—"
    tokens = ratio_ci([300, 300, 500], [1, 1, 0])
    assert tokens.value == 550 and tokens.n == 3
    paired = paired_ci([1, 2, 3, None], [3, 4, 5, 7])
    assert (paired.value, paired.low, paired.high, paired.n) == (2, 2, 2, 3)
    assert paired.cell() == "2.00 [2.00, 2.00]"


def test_the_constrained_variant_is_full_under_the_grammar_and_the_others_are_not() -> None:
    settings = Settings(vlm_grammar="auto")
    variants = {v.name: v for v in resolve_variants()}
    assert variants["constrained"].context(settings).vlm_grammar == "on"
    assert {name: variant.context(settings).vlm_grammar for name, variant in variants.items()
            if name != "constrained"} == dict.fromkeys(set(variants) - {"constrained"}, "off")
    assert variants["constrained"].fingerprint(settings) != variants["full"].fingerprint(settings)


def test_variants_from_built_ins_a_config_file_and_prompt_sets(tmp_path: Path) -> None:
    assert [v.name for v in resolve_variants()] == list(BUILTIN)
    config = tmp_path / "variants.toml"
    config.write_text('[variants.k8]\nrag_k = 8\n\n[variants.think-caption]\nbase = '
                      '"caption-only"\nvlm_thinking = true\nprompts_dir = "mine"\n')
    variants = {v.name: v for v in resolve_variants(config=config)}
    assert set(variants) == {*BUILTIN, "k8", "think-caption"}
    assert variants["k8"].overrides == {"rag_k": 8}
    assert variants["think-caption"].overrides == {
        "rag": False, "refine": False, "see_image": False, "vlm_thinking": True,
        "prompts_dir": str(tmp_path / "mine")}
    settings = Settings()
    assert variants["full"].fingerprint(settings) != variants["k8"].fingerprint(settings)
    assert variants["k8"].context(settings).explain == "none"

    for text, message in [("[variants.x]\nragk = 3\n", "unknown setting(s) ragk"),
                          ("[variants.x]\nrepairs = 3\n", "unknown setting(s) repairs (now "
                           "max_repairs)"),
                          ("[variants.x]\nrag_k = 'many'\n", "rag_k: Input should be"),
                          ("[variants.x]\nbase = 'nope'\n", "unknown base 'nope'")]:
        config.write_text(text)
        with pytest.raises(VariantError, match=re.escape(message)):
            resolve_variants(config=config)
    with pytest.raises(VariantError, match="unknown variant"):
        resolve_variants(["fulll"])

    prompts = tmp_path / "try"
    prompts.mkdir()
    with pytest.raises(VariantError, match=r"lacks system\.j2"):
        resolve_variants(prompts=[("try", prompts)])
    for file in GRAPH_PROMPTS:
        shutil.copy(shipped_prompts() / file, prompts / file)
    assert [v.name for v in resolve_variants(prompts=[("try", prompts)])] == ["try"]
    assert [v.name for v in resolve_variants(["full", "no-rag"], prompts=[("try", prompts)])] == [
        "full@try", "no-rag@try"]
    assert parse_prompt_option("try=my prompts/") == ("try", Path("my prompts"))
    with pytest.raises(VariantError, match="NAME=DIR"):
        parse_prompt_option("my_prompts")


def judged_order(judge_server: ScriptedServer) -> list[tuple[str, str]]:
    """(question, tune title) of each judge question, in the order the judge was asked."""
    order = []
    for request in judge_server.requests:
        text = message_texts(request)
        if "Rate it from 1 to 7" in text:
            question = next(q.key for q in questions() if q.question in text)
            order.append((question, re.findall(r"^T:(.*)$", text, re.MULTILINE)[0]))
    return order


def test_the_seed_sets_the_judging_order(
    tmp_path: Path, images: Path, servers: tuple[ScriptedServer, ScriptedServer],
) -> None:
    composer_server, judge_server = servers
    orders = {}
    for name, seed in (("first", 0), ("again", 0), ("other", 1)):
        judge_server.requests.clear()
        (tmp_path / "results" / "judgments.jsonl").unlink(missing_ok=True)  # judge anew
        result = evaluate(tmp_path, images, composer_server, judge_server,
                          ["no-rag-no-refine"], repeats=1, clip=False, concurrency=1,
                          seed=seed)
        assert result.summary.meta["seed"] == seed
        assert f"shuffled with seed {seed}" in result.markdown
        orders[name] = judged_order(judge_server)
    assert len(orders["first"]) == 2 * 8  # two tunes, eight questions
    assert orders["again"] == orders["first"]
    assert orders["other"] != orders["first"]
    assert sorted(orders["other"]) == sorted(orders["first"])


class GatedJudge(BaseChatModel):
    """An async judge whose first `width` calls wait for each other, so the evaluation finishes
    only if it awaits that many judge calls at once; it counts the most ever in flight."""

    width: int
    in_flight: int = 0
    most: int = 0
    gate: Any = None

    @property
    def _llm_type(self) -> str:
        return "gated"

    def _generate(self, messages: list[BaseMessage], stop: Sequence[str] | None = None,
                  run_manager: Any = None, **kwargs: Any) -> ChatResult:
        raise AssertionError("the judge is awaited, not called from a thread")

    async def _agenerate(self, messages: list[BaseMessage], stop: Sequence[str] | None = None,
                         run_manager: Any = None, **kwargs: Any) -> ChatResult:
        self.gate = self.gate or asyncio.Event()
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        if self.in_flight == self.width:
            self.gate.set()
        try:
            await asyncio.wait_for(self.gate.wait(), timeout=30)
        finally:
            self.in_flight -= 1
        reply = json.dumps({"reason": "fine", "score": 5})
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=reply))])


def test_the_judge_is_awaited_concurrently_within_the_bound(
    tmp_path: Path, images: Path, servers: tuple[ScriptedServer, ScriptedServer],
) -> None:
    composer_server, judge_server = servers
    gated = GatedJudge(width=3)
    settings = Settings(vlm_base_url=composer_server.url, vlm_model=composer_server.model,
                        judge_base_url=judge_server.url, judge_model=judge_server.model,
                        vlm_retries=0, data_dir=tmp_path / "data")
    result = run_eval(EvalOptions(images=[images], out=tmp_path / "results", repeats=1,
                                  clip=False, concurrency=3,
                                  variants=resolve_variants(["no-rag-no-refine"])),
                      settings=settings, retriever_for=lambda _: Examples(),
                      judge_model=gated)
    assert result.errors == [] and result.judge_calls == 2 * 8
    assert gated.most == 3  # three at once, never more
    assert judge_server.requests == []


def test_reference_names_the_variant_the_others_are_compared_with(
    tmp_path: Path, images: Path, servers: tuple[ScriptedServer, ScriptedServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    composer_server, judge_server = servers
    for name, value in {"IMG2MUSIC_VLM_BASE_URL": composer_server.url,
                        "IMG2MUSIC_VLM_MODEL": composer_server.model,
                        "IMG2MUSIC_JUDGE_BASE_URL": judge_server.url,
                        "IMG2MUSIC_JUDGE_MODEL": judge_server.model,
                        "IMG2MUSIC_VLM_RETRIES": "0"}.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    arguments = ["eval", "--images", str(images), "--variants", "caption-only,no-rag-no-refine",
                 "--out", str(tmp_path / "cli"), "--repeats", "1", "--no-clip"]
    unknown = CliRunner().invoke(app, [*arguments, "--reference", "full"])
    assert unknown.exit_code == 2
    assert "--reference full is not among the variants run" in unknown.stderr
    assert not (tmp_path / "cli").exists()  # refused before anything ran

    result = CliRunner().invoke(app, [*arguments, "--reference", "no-rag-no-refine"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert summary["reference"] == "no-rag-no-refine"
    assert list(summary["paired"]) == ["caption-only"]
    markdown = (tmp_path / "cli" / "summary.md").read_text()
    assert "## Paired differences against `no-rag-no-refine`" in markdown


def test_without_a_judge_endpoint_the_composer_judges_itself_and_says_so(
    tmp_path: Path, images: Path,
) -> None:
    def composer_and_judge(body: dict[str, Any]) -> str:
        asked = message_texts(body)
        return judge(body) if "Rate it from 1 to 7" in asked or "Imagine" in asked else (
            composer(body))

    with scripted_server(composer_and_judge) as server:
        settings = Settings(vlm_base_url=server.url, vlm_model=server.model, vlm_retries=0,
                            data_dir=tmp_path / "data")
        result = run_eval(EvalOptions(images=[images], out=tmp_path / "self",
                                      variants=resolve_variants(["no-rag-no-refine"]),
                                      repeats=1, clip=False),
                          settings=settings, retriever_for=lambda _: Examples())
    assert result.errors == [] and result.judge_calls == 2 * 8
    judged = [r for r in server.requests if "Rate it from 1 to 7" in message_texts(r)]
    assert len(judged) == 16 and all(r["model"] == server.model for r in judged)
    judge_meta = result.summary.meta["judge"]
    assert judge_meta["self_judging"] is True and judge_meta["endpoint"] == server.url
    assert "The judge is the composing model itself" in result.markdown


def test_changed_settings_are_composed_and_judged_again_not_mixed_in(
    tmp_path: Path, images: Path, servers: tuple[ScriptedServer, ScriptedServer],
) -> None:
    composer_server, judge_server = servers

    def run(**changed: Any) -> EvalResult:
        settings = Settings(**{"vlm_base_url": composer_server.url,
                               "vlm_model": composer_server.model,
                               "judge_base_url": judge_server.url,
                               "judge_model": judge_server.model, "vlm_retries": 0,
                               "data_dir": tmp_path / "data", **changed})
        return run_eval(EvalOptions(images=[images], out=tmp_path / "results",
                                    variants=resolve_variants(["no-rag-no-refine"]),
                                    repeats=1, clip=False),
                        settings=settings, retriever_for=lambda _: Examples())

    first = run()
    assert (first.composed, first.reused, first.judge_calls) == (2, 0, 16)
    hotter = run(vlm_temperature=0.9)  # another composition setting: new runs
    assert (hotter.composed, hotter.reused, hotter.judge_calls) == (2, 0, 16)
    assert {body["temperature"] for body in composer_server.requests[-4:]} == {0.9}
    stricter = run(vlm_temperature=0.9, judge_temperature=0.1)  # another judge: judged again
    assert (stricter.composed, stricter.reused, stricter.judge_calls) == (0, 2, 16)
    again = run(vlm_temperature=0.9, judge_temperature=0.1)  # nothing changed: nothing redone
    assert (again.composed, again.reused, again.judge_calls) == (0, 2, 0)
    runs = (tmp_path / "results" / "runs.jsonl").read_text().splitlines()
    items = (tmp_path / "results" / "items.jsonl").read_text().splitlines()
    assert len(runs) == 4 and len(items) == 2  # the old runs stay on file, not in the results
    assert all(json.loads(item)["settings"]["vlm_temperature"] == 0.9 for item in items)
