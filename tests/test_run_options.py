"""One name per run setting, the same in every place a user meets it, and every run option of
`Context` offered at each door (the CLI, the HTTP API, the page) without being written again.

The names below are written out here, not read from the code they check: a rename in one place
and not another fails this test.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
import typer
from pydantic import Field
from typer.testing import CliRunner

from img2music.cli.main import app
from img2music.cli.run_options import with_run_options
from img2music.eval.variants import resolve_variants
from img2music.graph.context import OPERATOR_FIELDS, PROMPT_FIELDS, Context
from img2music.graph.options import options_model, run_options
from img2music.settings import get_settings
from tests.test_server import KEY, image_message, img2music_server, post

# env var, Context field (Studio), CLI flag, HTTP option (img2music.<name>), report key, and a
# value that is not the default.
NAMES: list[tuple[str | None, str, str, str, str, Any]] = [
    ("IMG2MUSIC_RAG_K", "rag_k", "--rag-k", "rag_k", "rag_k", 1),
    ("IMG2MUSIC_RAG_FUSION", "rag_fusion", "--rag-fusion", "rag_fusion", "rag_fusion",
     "weighted"),
    ("IMG2MUSIC_MAX_REPAIRS", "max_repairs", "--max-repairs", "max_repairs", "max_repairs", 2),
    ("IMG2MUSIC_REFINE_ROUNDS", "refine_rounds", "--refine-rounds", "refine_rounds",
     "refine_rounds", 0),
    ("IMG2MUSIC_VLM_TEMPERATURE", "vlm_temperature", "--vlm-temperature", "vlm_temperature",
     "vlm_temperature", 0.25),
    ("IMG2MUSIC_VLM_MAX_TOKENS", "vlm_max_tokens", "--vlm-max-tokens", "vlm_max_tokens",
     "vlm_max_tokens", 777),
    ("IMG2MUSIC_VLM_THINKING", "vlm_thinking", "--vlm-thinking", "vlm_thinking", "vlm_thinking",
     True),
    ("IMG2MUSIC_SEED", "seed", "--seed", "seed", "seed", 4242),
    (None, "see_image", "--no-see-image", "see_image", "see_image", False),
]


def help_text(*command: str) -> str:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize(("env", "field", "flag", "option", "key", "value"), NAMES)
def test_a_setting_has_one_name_as_variable_field_and_flag(
    monkeypatch: pytest.MonkeyPatch, env: str | None, field: str, flag: str, option: str,
    key: str, value: Any,
) -> None:
    assert field in {item.name for item in fields(Context)}
    if env is not None:
        monkeypatch.setenv(env, value if isinstance(value, str) else json.dumps(value))
        get_settings.cache_clear()
        try:
            assert getattr(Context.from_settings(get_settings()), field) == value
        finally:
            monkeypatch.delenv(env)
            get_settings.cache_clear()
    assert f" {flag} " in help_text("compose")


def test_a_request_sets_each_option_by_that_name_and_the_report_keeps_it(tmp_path: Path) -> None:
    options = {option: value for _, _, _, option, _, value in NAMES}
    with img2music_server(tmp_path) as server:
        response = post(server, {"model": "img2music", "messages": image_message(),
                                 "img2music": options})
        assert response.status_code == 200, response.text
        run_id = response.json()["img2music"]["run_id"]
        report = httpx.get(f"{server.url}/v1/runs/{run_id}/report.json", timeout=30).json()
    settings = report["settings"]
    assert {key: settings[key] for _, _, _, _, key, _ in NAMES} == {
        key: value for _, _, _, _, key, value in NAMES}
    assert {body["max_completion_tokens"] for body in server.vlm.requests} == {777}


@pytest.mark.parametrize(("sent", "message"), [
    ({"k": 2}, "img2music.k: unknown option; it is now rag_k"),
    ({"repairs": 2}, "img2music.repairs: unknown option; it is now max_repairs"),
    ({"fusion": "rrf"}, "img2music.fusion: unknown option; it is now rag_fusion"),
    ({"rag_k": 1, "frobnicate": True}, "img2music.frobnicate: unknown option"),
    ({"prompts_dir": "/etc"}, "img2music.prompts_dir: not a run option: the operator's "
                              "setting IMG2MUSIC_PROMPTS_DIR decides it"),
])
def test_an_unknown_or_former_option_is_refused_naming_it(
    tmp_path: Path, sent: dict[str, Any], message: str,
) -> None:
    with img2music_server(tmp_path) as server:
        response = post(server, {"model": "img2music", "messages": image_message(),
                                 "img2music": sent})
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["message"] == message and error["code"] == "unknown_option"
        assert server.vlm.requests == []


def test_every_run_field_is_a_flag_an_http_option_and_described(tmp_path: Path) -> None:
    offered = {item.name for item in fields(Context)} - set(OPERATOR_FIELDS) - set(
        PROMPT_FIELDS.values())
    compose_help = help_text("compose")
    for name in offered:
        assert f" --{name.replace('_', '-')} " in compose_help, name
    with img2music_server(tmp_path, api_key=KEY) as server:
        listed = httpx.get(f"{server.url}/v1/options",
                           headers={"Authorization": f"Bearer {KEY}"}).json()
        refused = httpx.get(f"{server.url}/v1/options")
    assert refused.status_code == 401
    properties = listed["schema"]["properties"]
    assert set(properties) == set(listed["defaults"]) == offered
    assert all(properties[name]["description"] for name in offered)
    assert listed["schema"]["additionalProperties"] is False


@dataclass(kw_only=True)
class WithSwing(Context):
    swing: Annotated[int | None, Field(ge=50, le=75, description="Swing, in percent.")] = None


def test_a_field_added_to_the_context_is_a_flag_and_an_option_at_once() -> None:
    given: list[dict[str, Any]] = []

    def command(note: str = "", *, run_options: dict[str, Any]) -> None:
        given.append(run_options)

    cli = typer.Typer()
    cli.command()(with_run_options(command, context=WithSwing))
    cli.command("other")(lambda: None)
    runner = CliRunner()
    shown = runner.invoke(cli, ["command", "--help"], env={"COLUMNS": "300"}).output
    assert " --swing " in shown and "Swing, in percent." in shown
    assert runner.invoke(cli, ["command", "--swing", "66", "-k", "2"]).exit_code == 0
    assert given == [{"swing": 66, "rag_k": 2}]
    slow = runner.invoke(cli, ["command", "--swing", "5"])
    assert slow.exit_code == 2 and "Invalid value for '--swing'" in slow.output
    assert [option.name for option in run_options(WithSwing)][-1] == "swing"
    schema = options_model(WithSwing).model_json_schema()["properties"]["swing"]
    assert schema["description"] == "Swing, in percent."
    assert "swing" not in options_model().model_fields


def test_eval_takes_the_run_settings_as_every_variants_base() -> None:
    shown = help_text("eval")
    assert " --max-repairs " in shown and " --judge-seed " in shown
    variants = {variant.name: variant.context(get_settings()) for variant in resolve_variants(
        ["full", "no-rag"], base={"max_repairs": 1, "rag": True, "seed": 9})}
    assert {name: (c.max_repairs, c.rag, c.seed) for name, c in variants.items()} == {
        "full": (1, True, 9), "no-rag": (1, False, 9)}  # the variant's own setting wins
