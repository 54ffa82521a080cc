"""The CLIP embedder, offline: the tiny config with seeded random weights, never a download."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
from huggingface_hub import constants as hf_constants
from matplotlib import cbook
from PIL import Image

from img2music.settings import Settings
from img2music.tools.embedder import (
    LONGCLIP_KEEP,
    TINY_MODEL,
    Embedder,
    EmbedderUnavailable,
    load_clip,
    load_embedder,
    resolve_device,
    stretch_positions,
)

WORDS = ["calm", "piano", "melody", "with", "soft", "strings", "and", "a", "slow", "tempo"]
LONG_CAPTION = " ".join(WORDS[i % len(WORDS)] for i in range(198))  # 200 tokens with start, end
SHORT_CAPTION = " ".join(LONG_CAPTION.split()[:75])  # what 77 positions keep of it
CAPTIONS = [
    "A calm piano piece in A minor with soft strings.",
    "Energetic rock song with loud drums and electric guitar.",
    "A slow waltz in three four time.",
    "Dark ambient drones.",
    "A cheerful folk tune played on the fiddle.",
]


def tiny_settings(**overrides: object) -> Settings:
    """Every embedder field set here, so the environment cannot change what a test builds."""
    fields: dict[str, object] = {
        "clip_model": TINY_MODEL,
        "clip_pretrained": "none",
        "clip_context_length": None,
        "clip_device": "cpu",
        "clip_batch_size": 64,
    }
    fields.update(overrides)
    return Settings(**fields)  # type: ignore[arg-type]


def tiny(**overrides: object) -> Embedder:
    return load_embedder(tiny_settings(**overrides))


def gradient(size: tuple[int, int] = (80, 60)) -> Image.Image:
    width, height = size
    x = np.linspace(0, 255, width, dtype=np.float64)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float64)[:, None]
    rgb = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8))


def unit_rows(vectors: npt.NDArray[np.float32]) -> bool:
    return bool(np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5))


@pytest.fixture(autouse=True)
def fresh_models() -> Iterator[None]:
    load_clip.cache_clear()
    yield
    load_clip.cache_clear()


def test_texts_and_images_embed_as_unit_rows() -> None:
    embedder = tiny()
    texts = embedder.embed_texts(CAPTIONS[:3])
    images = embedder.embed_images([gradient(), gradient((30, 90))])
    assert texts.shape == (3, 64) and texts.dtype == np.float32
    assert images.shape == (2, 64) and images.dtype == np.float32
    assert unit_rows(texts) and unit_rows(images)
    assert embedder.embed_texts([]).shape == (0, 64)
    assert embedder.embed_images([]).shape == (0, 64)
    assert embedder.name == "img2music-tiny|none|ctx77"
    assert (embedder.dimension, embedder.context_length) == (64, 77)
    assert embedder.device == torch.device("cpu")


def test_one_string_is_refused() -> None:
    with pytest.raises(TypeError):
        tiny().embed_texts("a calm piano piece")


def test_models_are_built_once_per_space() -> None:
    assert tiny().clip is tiny(clip_batch_size=3).clip
    assert tiny().clip is not tiny(clip_context_length=248).clip


def test_random_weights_are_the_same_after_a_reload() -> None:
    first = tiny()
    load_clip.cache_clear()
    second = tiny()
    assert first.clip is not second.clip
    np.testing.assert_array_equal(first.embed_texts(CAPTIONS), second.embed_texts(CAPTIONS))
    np.testing.assert_array_equal(
        first.embed_images([gradient()]), second.embed_images([gradient()])
    )


def test_random_weights_are_the_same_in_another_process() -> None:
    probe = (
        "import json\n"
        "from img2music.settings import Settings\n"
        "from img2music.tools.embedder import load_embedder\n"
        f"settings = Settings(clip_model={TINY_MODEL!r}, clip_pretrained='none',\n"
        "                    clip_context_length=None, clip_device='cpu', clip_batch_size=64)\n"
        f"print(json.dumps(load_embedder(settings).embed_texts([{CAPTIONS[0]!r}])[0].tolist()))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    theirs = np.array(json.loads(result.stdout.strip().splitlines()[-1]), dtype=np.float32)
    np.testing.assert_allclose(tiny().embed_texts([CAPTIONS[0]])[0], theirs, atol=1e-6)


def test_loading_leaves_the_global_random_state_alone() -> None:
    torch.manual_seed(1234)
    expected = torch.rand(4)
    torch.manual_seed(1234)
    tiny()
    torch.testing.assert_close(torch.rand(4), expected, rtol=0, atol=0)


def test_batches_give_the_same_vectors_as_one_at_a_time() -> None:
    images = [gradient((40 + 10 * i, 50)) for i in range(5)]
    batched, single = tiny(clip_batch_size=2), tiny(clip_batch_size=1)
    np.testing.assert_allclose(
        batched.embed_texts(CAPTIONS), single.embed_texts(CAPTIONS), atol=1e-6
    )
    np.testing.assert_allclose(batched.embed_images(images), single.embed_images(images), atol=1e-6)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "L", "LA", "1", "CMYK", "I;16", "I", "F"])
def test_images_of_every_mode_embed(mode: str) -> None:
    source = gradient()
    if mode == "I;16":
        levels = np.asarray(source.convert("L"), dtype=np.uint16) * 257
        image = Image.fromarray(levels)
        assert image.mode.startswith("I;16")
    else:
        image = source.convert(mode)
    vectors = tiny().embed_images([image])
    assert vectors.shape == (1, 64) and np.isfinite(vectors).all() and unit_rows(vectors)


def test_transparent_pixels_embed_as_white() -> None:
    clear, white = Image.new("RGBA", (64, 64), (0, 0, 0, 0)), Image.new("RGB", (64, 64), "white")
    vectors = tiny().embed_images([clear, white])
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)


def test_a_real_photograph_embeds() -> None:
    path = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    with Image.open(path) as photo:
        vectors = tiny().embed_images([photo])
    assert vectors.shape == (1, 64) and unit_rows(vectors)


def longclip_reference(table: torch.Tensor) -> torch.Tensor:
    """LongCLIP's own stretch (Long-CLIP `model/longclip.py`), written out row by row."""
    length, keep = table.shape[0], LONGCLIP_KEEP
    new = torch.zeros(4 * length - 3 * keep, table.shape[1], dtype=table.dtype)
    new[:keep] = table[:keep]
    for i in range(length - 1 - keep):
        low, high = table[i + keep], table[i + 1 + keep]
        for step in range(4):
            new[4 * i + step + keep] = (4 - step) * low / 4 + step * high / 4
    for step in range(4):
        new[4 * length - 3 * keep - 4 + step] = (
            table[-1] + step * (table[-1] - table[-2]) / 4
        )
    return new


def test_stretch_is_longclips() -> None:
    table = torch.randn(77, 16, generator=torch.Generator().manual_seed(5))
    stretched = stretch_positions(table, 248)
    assert stretched.shape == (248, 16)
    torch.testing.assert_close(stretched, longclip_reference(table), rtol=0, atol=1e-6)
    assert torch.equal(stretched[:LONGCLIP_KEEP], table[:LONGCLIP_KEEP])
    for k in range(57):  # every old tail row lands, unchanged, on every fourth new row
        assert torch.equal(stretched[20 + 4 * k], table[20 + k])
    for k in range(56):  # and the midpoints between them are exact averages
        assert torch.equal(stretched[22 + 4 * k], (table[20 + k] + table[21 + k]) / 2)
    torch.testing.assert_close(stretched[247], table[76] + 0.75 * (table[76] - table[75]))
    assert stretch_positions(table, 134)[20::2][:57].equal(table[20:])  # any target: ×2 here


def test_a_longer_context_stretches_the_text_positions() -> None:
    plain, long = tiny(), tiny(clip_context_length=248)
    before = plain.clip.model.positional_embedding
    after = long.clip.model.positional_embedding
    assert after.shape == (248, 64)
    assert torch.equal(after[:LONGCLIP_KEEP], before[:LONGCLIP_KEEP])
    assert all(torch.equal(after[20 + 4 * k], before[20 + k]) for k in range(57))
    causal = torch.full((248, 248), float("-inf")).triu(1)
    assert torch.equal(long.clip.model.attn_mask, causal)
    assert long.name == "img2music-tiny|none|ctx248" and long.context_length == 248
    assert long.clip.tokenizer([LONG_CAPTION]).shape == (1, 248)


def test_a_long_caption_is_read_whole_when_stretched(caplog: pytest.LogCaptureFixture) -> None:
    tokens = tiny().clip.tokenizer.encode(LONG_CAPTION)
    assert len(tokens) + 2 == 200
    long = tiny(clip_context_length=248)
    with caplog.at_level(logging.WARNING, logger="img2music.tools.embedder"):
        whole, start = long.embed_texts([LONG_CAPTION, SHORT_CAPTION])
    assert "were cut" not in caplog.text
    assert not np.allclose(whole, start, atol=1e-3)


def test_a_long_caption_is_cut_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    plain = tiny()
    with caplog.at_level(logging.WARNING, logger="img2music.tools.embedder"):
        whole, start = plain.embed_texts([LONG_CAPTION, SHORT_CAPTION])
    assert "1 of 2 texts are longer than the 77 tokens" in caplog.text
    assert "IMG2MUSIC_CLIP_CONTEXT_LENGTH=248" in caplog.text
    np.testing.assert_allclose(whole, start, atol=1e-6)  # cut to what 77 positions hold


def longclip_checkpoint(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """A tiny checkpoint laid out like LongCLIP's: two 248-row tables, first 20 rows + the rest."""
    state = {key: value.clone() for key, value in tiny().clip.model.state_dict().items()}
    generator = torch.Generator().manual_seed(7)
    kept = torch.randn(248, 64, generator=generator)
    rest = torch.randn(248, 64, generator=generator)
    state["positional_embedding"], state["positional_embedding_res"] = kept, rest
    torch.save(state, path)
    return kept, rest


@pytest.mark.parametrize("context_length", [None, 248])
def test_a_longclip_checkpoint_loads_without_a_second_stretch(
    tmp_path: Path, context_length: int | None
) -> None:
    path = tmp_path / "longclip-tiny.pt"
    kept, rest = longclip_checkpoint(path)
    loaded = tiny(clip_pretrained=str(path), clip_context_length=context_length)
    table = loaded.clip.model.positional_embedding
    assert torch.equal(table, torch.cat([kept[:LONGCLIP_KEEP], rest[LONGCLIP_KEEP:]]))
    assert loaded.context_length == 248 and loaded.clip.model.attn_mask.shape == (248, 248)
    assert loaded.name.startswith("img2music-tiny|sha256:") and loaded.name.endswith("|ctx248")
    assert unit_rows(loaded.embed_texts([LONG_CAPTION]))


def test_a_clip_checkpoint_is_stretched_after_loading(tmp_path: Path) -> None:
    path = tmp_path / "clip-tiny.pt"
    state = tiny().clip.model.state_dict()
    state["positional_embedding"] = torch.randn(77, 64, generator=torch.Generator().manual_seed(3))
    torch.save(state, path)
    loaded = tiny(clip_pretrained=str(path), clip_context_length=248)
    expected = stretch_positions(state["positional_embedding"], 248)
    assert torch.equal(loaded.clip.model.positional_embedding, expected)


def test_a_file_that_is_no_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "broken.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(EmbedderUnavailable, match=r"broken\.pt"):
        tiny(clip_pretrained=str(path))


def test_weights_that_cannot_download_give_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)  # read once, at import
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))  # no cached copy either
    connections: list[object] = []

    def no_network(sock: socket.socket, address: object) -> None:
        connections.append(address)
        raise OSError("the test allows no network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(EmbedderUnavailable) as caught:
        tiny(clip_model="ViT-B-32", clip_pretrained="laion2b_s34b_b79k")
    assert connections == []  # offline means no attempt, not one that fails slowly
    message = str(caught.value)
    assert "ViT-B-32" in message and "laion2b_s34b_b79k" in message
    assert "IMG2MUSIC_CLIP_PRETRAINED=none" in message


def test_unknown_models_and_tags_are_named() -> None:
    with pytest.raises(EmbedderUnavailable, match="no CLIP model 'ViT-Z-99'"):
        tiny(clip_model="ViT-Z-99")
    with pytest.raises(EmbedderUnavailable, match="neither an open_clip tag"):
        tiny(clip_pretrained="no-such-tag")


def test_devices() -> None:
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(EmbedderUnavailable):
        resolve_device("no-such-device")
    if not torch.cuda.is_available():
        with pytest.raises(EmbedderUnavailable, match="CUDA is not available"):
            resolve_device("cuda")
