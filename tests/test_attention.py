"""Attention maps, the local VLM backend and their drawings, offline: a tiny random Qwen2-VL."""

from __future__ import annotations

import asyncio
import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.runtime import Runtime
from matplotlib import cbook
from PIL import Image
from transformers import AttentionInterface
from transformers.models.qwen2_vl.modeling_qwen2_vl import (
    Qwen2VLAttention,
    eager_attention_forward,
)

from img2music.graph import local_vlm
from img2music.graph.context import Context
from img2music.graph.explain import image_explanation
from img2music.graph.local_vlm import (
    LocalChatModel,
    LocalModelUnavailable,
    LocalTurn,
    LocalVLM,
    to_conversation,
)
from img2music.graph.models import chat_model
from img2music.graph.nodes import explain
from img2music.graph.state import State
from img2music.settings import Settings
from img2music.tools.abc.check import check_abc
from img2music.tools.abc.scan import sections_of
from img2music.tools.explain.attention import AttentionUnavailable, image_attention, token_spans_for
from img2music.tools.explain.relevance import clip_patch_relevance
from img2music.tools.render.overlays import (
    ATTENTION_TITLE,
    CLIP_TITLE,
    draw_overlay,
    draw_section_overlays,
)
from img2music.tools.retrieval.embedder import load_embedder
from tests.test_explain import chosen_state
from tests.test_graph import REFINED
from tests.tiny_vlm import MERGE_SIZE, build_tiny_vlm, tiny_tokenizer

SECTIONS_ABC = """```abc
X:1
T:Étude at dawn
M:4/4
L:1/8
K:C
% [intro]
CDEF GABc|
% [theme]
cBAG FEDC|
C8|]
```
Motivation: the light rises, so the melody does.
"""
VOICES_ABC = """X:1
T:Duet
M:3/4
L:1/8
V:1 name="Flute"
V:2 name="Bass"
K:G
V:1
B2 c2 d2|g6|
V:2
G,4 D,2|G,6|
V:1
e2 d2 B2|A6|]
[V:2] C4 D2|D,6|]

"""


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A real photograph (512 × 600) that ships with matplotlib."""
    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as image:
        return image.convert("RGB")


@pytest.fixture(scope="module")
def wide(photo: Image.Image) -> Image.Image:
    return photo.crop((0, 200, 512, 350))


@pytest.fixture(scope="module")
def vlm() -> LocalVLM:
    model, processor = build_tiny_vlm()
    return LocalVLM(model, processor, name="tiny-qwen2-vl")


@pytest.fixture
def fresh_vlm() -> LocalVLM:
    """A model no test has run yet: its hooks are only those a test adds."""
    model, processor = build_tiny_vlm()
    return LocalVLM(model, processor, name="tiny-qwen2-vl")


def data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def conversation(image: Image.Image) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [
        {"type": "image", "image": image}, {"type": "text", "text": "Compose a tune."}]}]


def hook_count(model: torch.nn.Module) -> int:
    return sum(len(module._forward_hooks) for module in model.modules())


def test_chat_model_answers_text_and_image_with_usage(vlm: LocalVLM, photo: Image.Image) -> None:
    chat = LocalChatModel(vlm=vlm, max_new_tokens=12)
    messages = [
        SystemMessage("You are a composer."),
        HumanMessage([{"type": "text", "text": "Compose a tune for this image."},
                      {"type": "image_url", "image_url": {"url": data_url(photo)}}]),
    ]
    answer = chat.invoke(messages)

    assert isinstance(answer.content, str)
    usage = answer.usage_metadata
    assert usage is not None
    read = to_conversation(messages)
    assert [message["role"] for message in read] == ["system", "user"]
    assert LocalTurn(read, "", (), 0, 0, "stop").image.size == photo.size  # type: ignore[union-attr]
    prompt = vlm.prompt_inputs(read)
    image_tokens = int(prompt["image_grid_thw"][0].prod()) // MERGE_SIZE**2
    assert usage["input_tokens"] == prompt["input_ids"].shape[1] > image_tokens
    assert 0 < usage["output_tokens"] <= 12
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert answer.response_metadata["finish_reason"] in {"stop", "length"}
    assert answer.response_metadata["mask_seconds"] == []  # no grammar, nothing masked


def test_greedy_answers_repeat_and_bound_settings_apply(vlm: LocalVLM, photo: Image.Image) -> None:
    chat = LocalChatModel(vlm=vlm, temperature=0, max_new_tokens=8)
    messages = [HumanMessage([{"type": "image_url", "image_url": {"url": data_url(photo)}},
                              {"type": "text", "text": "Compose."}])]
    first, second = chat.invoke(messages), chat.invoke(messages)
    assert first.content == second.content

    short = chat.bind(max_new_tokens=3).invoke(messages)
    assert short.usage_metadata is not None and short.usage_metadata["output_tokens"] <= 3
    with pytest.raises(TypeError, match="extra_body"):
        chat.invoke(messages, extra_body={"top_k": 20})


def test_text_only_prompts_and_stop_strings(vlm: LocalVLM) -> None:
    chat = LocalChatModel(vlm=vlm, temperature=0, max_new_tokens=16)
    messages = [HumanMessage("Compose a tune.")]
    full = chat.invoke(messages).text
    assert len(full) >= 7
    stop = full[5:7]

    stopped = chat.invoke(messages, stop=[stop])
    assert stopped.text == full[: full.index(stop)]
    assert stopped.response_metadata["finish_reason"] == "stop"


def test_images_must_be_data_urls(vlm: LocalVLM) -> None:
    chat = LocalChatModel(vlm=vlm, max_new_tokens=2)
    remote = {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}}
    with pytest.raises(ValueError, match="data URL"):
        chat.invoke([HumanMessage([remote])])


def test_saved_model_loads_and_a_missing_one_is_explained(tmp_path: Path) -> None:
    model, processor = build_tiny_vlm(eager=False)
    model.save_pretrained(tmp_path / "tiny")
    processor.save_pretrained(tmp_path / "tiny")

    loaded = LocalVLM.load(str(tmp_path / "tiny"), attention=True, device="cpu")
    assert loaded.model.config._attn_implementation == "eager"
    assert loaded.model.dtype == torch.float32
    assert loaded.image_token_id == processor.image_token_id

    (tmp_path / "empty").mkdir()
    with pytest.raises(LocalModelUnavailable, match=r"empty.*must be downloaded first"):
        LocalVLM.load(str(tmp_path / "empty"))


def reference_maps(
    vlm: LocalVLM, image: Image.Image, written: list[int], spans: list[tuple[str, int, int]]
) -> tuple[npt.NDArray[np.float64], dict[str, npt.NDArray[np.float64]]]:
    """The paper's equation 2, written out from the full attention tensor that transformers
    returns with `output_attentions=True`; nothing of `img2music.tools.explain.attention` is
    used."""
    prompt = vlm.prompt_inputs(conversation(image))
    ids = torch.cat([prompt["input_ids"], torch.tensor([written])], dim=1)
    text = torch.zeros((1, len(written)), dtype=prompt["mm_token_type_ids"].dtype)  # 0: text
    with torch.no_grad():
        outputs = vlm.model(input_ids=ids, attention_mask=torch.ones_like(ids),
                            mm_token_type_ids=torch.cat([prompt["mm_token_type_ids"], text], 1),
                            pixel_values=prompt["pixel_values"],
                            image_grid_thw=prompt["image_grid_thw"], output_attentions=True,
                            use_cache=False)
    weights = torch.stack(outputs.attentions)[:, 0].double()  # layers, heads, query, key
    length = prompt["input_ids"].shape[1]
    image_columns = [i for i, token in enumerate(prompt["input_ids"][0].tolist())
                     if token == vlm.image_token_id]
    per_token = weights[:, :, length:, image_columns].mean(dim=(0, 1)).numpy()  # written, image
    _, patch_rows, patch_columns = prompt["image_grid_thw"][0].tolist()
    shape = (patch_rows // MERGE_SIZE, patch_columns // MERGE_SIZE)
    rows_of: dict[str, list[int]] = {}
    for name, start, end in spans:
        rows_of.setdefault(name, []).extend(range(start, end))
    return (per_token.mean(axis=0).reshape(shape),
            {name: per_token[rows].mean(axis=0).reshape(shape)
             for name, rows in rows_of.items()})


@pytest.mark.parametrize("image_name", ["photo", "wide"])
def test_hooked_map_equals_a_reference_from_the_full_attention_tensor(
    vlm: LocalVLM, image_name: str, request: pytest.FixtureRequest
) -> None:
    image: Image.Image = request.getfixturevalue(image_name)
    inputs = vlm.prompt_inputs(conversation(image))
    encoded = vlm.tokenizer(VOICES_ABC, add_special_tokens=False, return_offsets_mapping=True)
    spans = token_spans_for(VOICES_ABC, encoded["offset_mapping"], sections_of(VOICES_ABC))
    ids = encoded["input_ids"]

    hooked = image_attention(vlm.model, inputs, ids, vlm.image_token_id, token_spans=spans)
    grid, sections = reference_maps(vlm, image, ids, spans)

    assert hooked.grid.shape == grid.shape
    assert (hooked.layers, hooked.heads, hooked.tokens) == (2, 4, len(ids))
    assert hooked.image_tokens == grid.size
    np.testing.assert_allclose(hooked.grid, grid, atol=1e-6, rtol=1e-4)
    assert set(hooked.sections) == set(sections) == {"V:1", "V:2"}
    for name, section in hooked.sections.items():
        np.testing.assert_allclose(section, sections[name], atol=1e-6, rtol=1e-4)
    assert float(hooked.grid.min()) > 0
    assert not np.allclose(hooked.sections["V:1"], hooked.sections["V:2"], atol=0, rtol=1e-3)


STEERED = "img2music-test-steered"


def steer_attention(column: int) -> None:
    """The decoder's attention implementation, replaced: every position after `column` attends
    to it alone (the others to themselves). The vision tower keeps eager attention."""

    def steered(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                value: torch.Tensor, attention_mask: torch.Tensor | None, scaling: float,
                **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(module, Qwen2VLAttention):
            result: tuple[torch.Tensor, torch.Tensor] = eager_attention_forward(
                module, query, key, value, attention_mask, scaling, **kwargs)
            return result
        batch, heads, length, _ = query.shape
        chosen = torch.where(torch.arange(length) > column, column, torch.arange(length))
        weights = torch.nn.functional.one_hot(chosen, length).to(query.dtype)
        weights = weights.expand(batch, heads, length, length)
        values = value.repeat_interleave(heads // value.shape[1], dim=1)
        return (weights @ values).transpose(1, 2).contiguous(), weights

    AttentionInterface.register(STEERED, steered)


def test_attention_steered_to_one_patch_lights_that_patch(fresh_vlm: LocalVLM) -> None:
    """A known answer: black picture, one white cell of the merged grid (row 2, column 1 of
    3 × 4), and a model made to attend only to the image token that carries it."""
    pixels = np.zeros((84, 112, 3), dtype=np.uint8)  # 3 × 4 cells of 28 px: 2 × 2 patches each
    pixels[56:84, 28:56] = 255
    image = Image.fromarray(pixels)
    inputs = fresh_vlm.prompt_inputs(conversation(image))
    patches = inputs["pixel_values"]  # one row per 14-px patch, in the processor's order
    bright = (patches.mean(dim=1) > patches.mean()).nonzero().flatten()
    [token] = (bright // MERGE_SIZE**2).unique().tolist()  # 2 × 2 patches merge into a token
    image_columns = (inputs["input_ids"][0] == fresh_vlm.image_token_id).nonzero().flatten()
    steer_attention(int(image_columns[token]))
    fresh_vlm.model.set_attn_implementation(STEERED)

    ids = fresh_vlm.tokenizer(VOICES_ABC, add_special_tokens=False)["input_ids"]
    lit = image_attention(fresh_vlm.model, inputs, ids, fresh_vlm.image_token_id,
                          token_spans=[("V:1", 0, 10)])

    expected = np.zeros((3, 4), dtype=np.float32)
    expected[2, 1] = 1.0
    np.testing.assert_array_equal(lit.grid, expected)
    np.testing.assert_array_equal(lit.sections["V:1"], expected)


def test_shapes_follow_the_image(vlm: LocalVLM, photo: Image.Image, wide: Image.Image) -> None:
    tall_map = vlm.image_attention(_turn(photo, SECTIONS_ABC))
    wide_map = vlm.image_attention(_turn(wide, SECTIONS_ABC))
    assert tall_map.grid.shape[0] > tall_map.grid.shape[1]
    assert wide_map.grid.shape[0] < wide_map.grid.shape[1]


def test_a_name_in_several_spans_averages_over_all_their_tokens(
    vlm: LocalVLM, photo: Image.Image
) -> None:
    inputs = vlm.prompt_inputs(conversation(photo))
    ids = vlm.tokenizer(VOICES_ABC, add_special_tokens=False)["input_ids"]
    apart = image_attention(vlm.model, inputs, ids, vlm.image_token_id,
                            token_spans=[("a", 0, 10), ("b", 30, 50)])
    joined = image_attention(vlm.model, inputs, ids, vlm.image_token_id,
                             token_spans=[("ab", 0, 10), ("ab", 30, 50)])
    expected = (10 * apart.sections["a"] + 20 * apart.sections["b"]) / 30
    np.testing.assert_allclose(joined.sections["ab"], expected, atol=1e-6)


def test_hooks_are_removed_after_the_pass_and_after_a_failure(
    fresh_vlm: LocalVLM, photo: Image.Image
) -> None:
    model = fresh_vlm.model
    assert hook_count(model) == 0
    fresh_vlm.image_attention(_turn(photo, SECTIONS_ABC))
    assert hook_count(model) == 0

    # `LocalVLM` switches its model to eager attention for the pass; the pass itself, given a
    # model on attention that returns no weights, fails and leaves no hook behind.
    model.set_attn_implementation("sdpa")
    inputs = fresh_vlm.prompt_inputs(conversation(photo))
    ids = fresh_vlm.tokenizer(SECTIONS_ABC, add_special_tokens=False)["input_ids"]
    with pytest.raises(AttentionUnavailable, match="eager attention"):
        image_attention(model, inputs, ids, fresh_vlm.image_token_id)
    assert hook_count(model) == 0


def test_turn_map_has_one_grid_per_section(vlm: LocalVLM, photo: Image.Image) -> None:
    attention = vlm.image_attention(_turn(photo, SECTIONS_ABC))
    assert list(attention.sections) == ["intro", "theme"]
    assert attention.tokens == len(SECTIONS_ABC.encode())  # one byte, one token
    for grid in attention.sections.values():
        assert grid.shape == attention.grid.shape
        assert not np.allclose(grid, attention.grid, atol=0, rtol=0)


def test_clip_patch_relevance_is_on_the_patch_grid(photo: Image.Image) -> None:
    embedder = load_embedder(Settings(clip_model="img2music-tiny", clip_pretrained="none",
                                      clip_device="cpu"))
    grid = clip_patch_relevance(embedder, photo, "a portrait of an officer in uniform")
    assert grid.shape == (4, 4)  # 64 px / 16 px patches
    assert grid.dtype == np.float32
    assert float(grid.min()) == 0.0 and float(grid.max()) == pytest.approx(1.0)


@pytest.mark.parametrize("image_name", ["photo", "wide"])
def test_overlays_are_pngs_of_the_image_aspect(
    image_name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    image: Image.Image = request.getfixturevalue(image_name)
    grid = np.arange(12, dtype=np.float32).reshape(4, 3)

    path = draw_overlay(image, grid, tmp_path / "maps" / "overlay.png", title=CLIP_TITLE)
    with Image.open(path) as drawn:
        assert drawn.format == "PNG"
        aspect, expected = drawn.width / drawn.height, image.width / image.height
        assert aspect == pytest.approx(expected, rel=0.15)
        colours = np.unique(np.asarray(drawn.convert("RGB")).reshape(-1, 3), axis=0)
        assert len(colours) > 100  # a picture, not a blank

    sections = {"intro": grid, "theme": grid[::-1], "climax": grid * 2}
    path = draw_section_overlays(image, sections, tmp_path / "sections.png", title=ATTENTION_TITLE)
    with Image.open(path) as drawn:
        assert drawn.format == "PNG"
        assert drawn.width > drawn.height  # three panels side by side
    with pytest.raises(ValueError, match="no sections"):
        draw_section_overlays(image, {}, tmp_path / "none.png")


def test_sections_of_comment_blocks() -> None:
    spans = sections_of(SECTIONS_ABC)
    assert [name for name, _, _ in spans] == ["intro", "theme"]
    texts = [SECTIONS_ABC[start:end] for _, start, end in spans]
    assert texts == ["% [intro]\nCDEF GABc|\n", "% [theme]\ncBAG FEDC|\nC8|]\n"]


def test_sections_of_voices_skips_header_declarations() -> None:
    spans = sections_of(VOICES_ABC)
    assert [name for name, _, _ in spans] == ["V:1", "V:2", "V:1", "V:2"]
    texts = [VOICES_ABC[start:end] for _, start, end in spans]
    assert texts == ["V:1\nB2 c2 d2|g6|\n", "V:2\nG,4 D,2|G,6|\n", "V:1\ne2 d2 B2|A6|]\n",
                     "[V:2] C4 D2|D,6|]\n"]
    assert sections_of("X:1\nK:C\nCDEF|\n") == []


def test_token_spans_cover_the_section_text() -> None:
    tokenizer = tiny_tokenizer()
    encoded = tokenizer(SECTIONS_ABC, add_special_tokens=False, return_offsets_mapping=True)
    spans = token_spans_for(SECTIONS_ABC, encoded["offset_mapping"], sections_of(SECTIONS_ABC))
    ids = encoded["input_ids"]
    assert [tokenizer.decode(ids[start:end]) for _, start, end in spans] == [
        "% [intro]\nCDEF GABc|\n", "% [theme]\ncBAG FEDC|\nC8|]\n"]

    # "É" is two bytes, so two tokens with the same character offsets: both belong to the span.
    title = SECTIONS_ABC.index("Étude")
    [(_, start, end)] = token_spans_for(
        SECTIONS_ABC, encoded["offset_mapping"], [("title", title, title + 1)])
    assert end - start == 2
    assert token_spans_for(SECTIONS_ABC, encoded["offset_mapping"], [("empty", 5, 5)]) == []
    with pytest.raises(ValueError, match="past the end"):
        token_spans_for("short", encoded["offset_mapping"], [])


def _turn(image: Image.Image, text: str) -> LocalTurn:
    """A turn as if the model had written `text`: the attention pass only teacher-forces it."""
    return LocalTurn(conversation=conversation(image), text=text, generated_ids=(),
                     prompt_tokens=0, output_tokens=0, finish_reason="stop")


def saved_tiny_vlm(folder: Path) -> Path:
    """The tiny Qwen2-VL saved as a model folder, with the default (not eager) attention, as
    the local backend loads it."""
    model, processor = build_tiny_vlm(eager=False)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def other_run(state: State, image: Image.Image) -> State:
    """Another run's state: another picture (another grid shape), another tune."""
    url = data_url(image)
    conversation = [dict(message) for message in state["conversation"]]
    conversation[1] = {"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Compose."}]}
    conversation[2] = {"role": "assistant", "content": f"```abc\n{REFINED}```"}
    return {**state, "image": url, "conversation": conversation,  # type: ignore[typeddict-item]
            "attempts": [{**state["attempts"][0], "abc": REFINED}]}


def test_the_composer_and_the_attention_pass_share_one_loaded_copy(
    tmp_path: Path, photo: Image.Image, monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = saved_tiny_vlm(tmp_path / "tiny")
    loads: list[str] = []
    real_load = LocalVLM.load

    def counted(name_or_path: str, **options: Any) -> LocalVLM:
        loads.append(name_or_path)
        return real_load(name_or_path, **options)

    monkeypatch.setattr(LocalVLM, "load", counted)
    settings = Settings(vlm_backend="local", vlm_model=str(folder), data_dir=tmp_path / "data")
    context = Context.from_settings(settings, explain="attention", vlm_max_tokens=8)
    try:
        composer = chat_model(context, settings=settings)
        assert isinstance(composer, LocalChatModel)
        composer.invoke([HumanMessage([{"type": "image_url", "image_url": {"url": data_url(
            photo)}}, {"type": "text", "text": "Compose."}])])
        picture = image_explanation(chosen_state(), 0, context, composer, settings)
        again = chat_model(Context.from_settings(settings, vlm_temperature=0.1), settings=settings)
    finally:
        local_vlm.load_once.cache_clear()
    assert picture["method"] == "attention" and set(picture["sections"]) == {"theme", "close"}
    assert loads == [str(folder)]  # compose, attention and other settings: one load
    assert isinstance(again, LocalChatModel) and again.vlm is composer.vlm
    # The pass borrowed eager attention and gave it back: composing stays on the fast one.
    assert composer.vlm.model.config._attn_implementation == "sdpa"


def test_concurrent_runs_on_one_model_get_their_own_attention_maps(
    tmp_path: Path, wide: Image.Image,
) -> None:
    folder = saved_tiny_vlm(tmp_path / "tiny")
    settings = Settings(vlm_backend="local", vlm_model=str(folder), data_dir=tmp_path / "data")
    context = Context.from_settings(settings, explain="attention")
    first = chosen_state()
    second = other_run(first, wide)
    try:
        composer = chat_model(context, settings=settings)
        alone = [image_explanation(state, 0, context, composer, settings)
                 for state in (first, second)]
        runtime = Runtime(context=context)

        def chosen(state: State) -> State:
            attempt = state["attempts"][0]
            check = check_abc(attempt["abc"] or "").model_dump()
            return {**state, "best": 0,
                    "attempts": [{**attempt, "check": check}]}  # type: ignore[typeddict-item]

        async def both() -> list[State]:
            return list(await asyncio.gather(*(
                explain(chosen(state), runtime, model_for=lambda _: composer, settings=settings)
                for state in (first, second))))

        together = asyncio.run(both())
    finally:
        local_vlm.load_once.cache_clear()
    assert np.shape(alone[0]["grid"]) != np.shape(alone[1]["grid"])
    for solo, update in zip(alone, together, strict=True):
        drawn = update["explanation"]
        assert drawn["method"] == "attention"
        assert np.allclose(drawn["grid"], solo["grid"], atol=1e-6)
        assert drawn["sections"].keys() == solo["sections"].keys()
