"""The picture half of the explanation: attention with a local model, CLIP relevance without."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from img2music.graph.context import Context
from img2music.graph.explain import NO_LOCAL_MODEL, image_explanation
from img2music.graph.local_vlm import LocalChatModel, LocalVLM
from img2music.graph.state import Attempt, State
from img2music.pipeline.runs import compose
from img2music.settings import get_settings
from img2music.tools.images import image_data_url, open_image
from tests.scripted import ScriptedChatModel
from tests.serving import refusing_port
from tests.test_graph import DESCRIPTION, PHOTO, REFINED, TUNE, Examples, answer
from tests.tiny_vlm import build_tiny_vlm


@pytest.fixture
def tiny_clip(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("IMG2MUSIC_CLIP_MODEL", "img2music-tiny")
    monkeypatch.setenv("IMG2MUSIC_CLIP_PRETRAINED", "none")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def chosen_state() -> State:
    """A run that ended on one valid tune with two sections."""
    image = image_data_url(open_image(PHOTO), max_pixels=96 * 96)
    attempt: Attempt = {
        "n": 0, "round": 0, "kind": "compose", "raw": answer(TUNE), "abc": TUNE,
        "motivation": "A steady line for a calm portrait.", "fixes": [], "notes": [],
        "check": None, "midi": None, "metrics": None, "valid": True, "input_tokens": 0,
        "output_tokens": 0,
        "seconds": 0.0, "constrained": False,
    }
    return {
        "image": image, "description": "A calm portrait.", "attempts": [attempt],
        "conversation": [
            {"role": "system", "content": "You compose."},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}},
                                         {"type": "text", "text": "Compose."}]},
            {"role": "assistant", "content": f"```abc\n{TUNE}```\nMotivation: calm."},
        ],
    }


def test_attention_from_a_local_model_per_section() -> None:
    model, processor = build_tiny_vlm(eager=True)
    chat = LocalChatModel(vlm=LocalVLM(model, processor, name="tiny"))
    explanation = image_explanation(chosen_state(), 0, Context(explain="attention"), chat,
                                    get_settings())
    assert explanation["method"] == "attention"
    grid = np.asarray(explanation["grid"])
    assert grid.ndim == 2 and grid.size >= 4 and np.all(grid >= 0)
    assert set(explanation["sections"]) == {"theme", "close"}
    assert explanation["layers"] >= 1 and explanation["heads"] >= 1


def test_attention_without_a_local_model_falls_back_to_clip_and_says_so(tiny_clip: None) -> None:
    explanation = image_explanation(chosen_state(), 0, Context(explain="attention"),
                                    ScriptedChatModel(replies=[]), get_settings())
    assert explanation["method"] == "clip"
    assert explanation["note"] == NO_LOCAL_MODEL
    grid = np.asarray(explanation["grid"])
    assert grid.shape == (4, 4) and grid.min() >= 0 and grid.max() <= 1


def test_compose_writes_the_overlay_and_names_its_method(tiny_clip: None, tmp_path: Path) -> None:
    model = ScriptedChatModel(replies=[DESCRIPTION, answer(TUNE), answer(REFINED)])
    examples = Examples()
    result = compose(PHOTO, out_dir=tmp_path, model_for=lambda _: model,
                     retriever_for=lambda _: examples, explain="clip", refine_rounds=1)
    assert result.ok, result.error
    assert (tmp_path / "attention.png").read_bytes().startswith(b"\x89PNG")
    assert result.report["explanation"]["method"] == "clip"
    html = (tmp_path / "report.html").read_text()
    assert "CLIP patch relevance of the motivation (not the model&#39;s attention)" in html


def test_an_endpoint_that_is_down_fails_the_image_in_one_line(tmp_path: Path) -> None:
    from img2music import compose as top_level

    assert top_level is compose
    with refusing_port() as port:
        result = compose(PHOTO, out_dir=tmp_path, retriever_for=lambda _: Examples(),
                         vlm_base_url=f"http://127.0.0.1:{port}/v1", explain="none")
    assert not result.ok and result.abc is None
    assert f"http://127.0.0.1:{port}/v1" in (result.error or "")
    assert "refused the connection" in (result.error or "")
    assert "\n" not in (result.error or "")
    assert not (tmp_path / "tune.abc").exists()
