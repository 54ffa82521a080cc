"""Embed images, descriptions and music captions into one CLIP space, so retrieval can compare them.

The default model is open_clip's `ViT-B-32` with the LAION-2B weights `laion2b_s34b_b79k`:
151,277,313 parameters stored as float32, so the first run downloads about 605 MB
(151.3 M × 4 bytes) from the Hugging Face Hub into its cache; later runs read the cache.
`clip_pretrained` also takes any other open_clip tag of the model, or the path of a local
checkpoint. `none` builds the architecture with seeded random weights and downloads nothing:
every process builds the same model, so an index and its queries still agree, but the
similarities mean nothing. `img2music-tiny` (3.4 M parameters, shipped in `clip_configs/`)
builds in milliseconds for tests and offline runs.

CLIP's text encoder reads 77 tokens, and MidiCaps captions are often longer. With
`clip_context_length` above the model's own, the text positions are stretched the LongCLIP way:
the first 20 positions, which pretraining trained well, stay as they are and the rest are
linearly interpolated (×4 for 248 positions), so long captions are read instead of cut. Without
that, longer captions are cut by the tokenizer and `embed_texts` logs how many.

A real LongCLIP checkpoint (248 positions) loads from a local file as it is: the model is built
with the checkpoint's number of positions before loading, so nothing is stretched twice, and the
original repository's split tables (`positional_embedding` for the first 20 positions,
`positional_embedding_res` for the rest) are merged into one. LongCLIP-L is OpenAI's ViT-L/14, so
it needs `clip_model=ViT-L-14-quickgelu`. Checkpoints in Hugging Face transformers format (such as
`zer0int/LongCLIP-GmP-ViT-L-14`) do not use open_clip's key names and are not supported.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import open_clip
import torch
import torch.nn.functional as F
from open_clip.convert import convert_state_dict
from open_clip.factory import load_state_dict
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image

from img2music.settings import Settings, get_settings
from img2music.tools.devices import DeviceUnavailable, resolve_device
from img2music.tools.images import to_rgb

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent / "clip_configs"
TINY_MODEL = "img2music-tiny"
RANDOM_WEIGHTS = "none"
RANDOM_SEED = 0
# LongCLIP keeps the first 20 positions: pretraining saw short captions, so only these are trained
# well; the rest are stretched.
LONGCLIP_KEEP = 20
LONGCLIP_CONTEXT = 248

Item = TypeVar("Item")

open_clip.add_model_config(CONFIG_DIR)


class EmbedderUnavailable(RuntimeError):
    """The configured CLIP model cannot be built here: unknown name, no weights, wrong device."""


@dataclass(frozen=True)
class LoadedClip:
    """A built CLIP model with the transforms that feed it; one per embedding space and device."""

    model: Any  # an open_clip CLIP or CustomTextCLIP; open_clip is untyped
    preprocess: Callable[[Image.Image], torch.Tensor]
    tokenizer: Any  # open_clip's tokenizers are untyped callables: list[str] -> LongTensor
    name: str
    dimension: int
    context_length: int
    device: torch.device


class Embedder:
    """Embeds texts and images into one CLIP space as L2-normalised float32 rows."""

    def __init__(self, clip: LoadedClip, batch_size: int = 64) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, not {batch_size}")
        self.clip = clip
        self.batch_size = batch_size

    @property
    def name(self) -> str:
        """Model, weights and text context: vectors from different names must never be mixed."""
        return self.clip.name

    @property
    def dimension(self) -> int:
        return self.clip.dimension

    @property
    def context_length(self) -> int:
        return self.clip.context_length

    @property
    def device(self) -> torch.device:
        return self.clip.device

    def embed_texts(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """One row per text; texts longer than the context are cut, and a warning says how many."""
        if isinstance(texts, str):
            raise TypeError("embed_texts takes a sequence of texts, not one string")
        texts = list(texts)
        cut = sum(_token_count(self.clip.tokenizer, text) > self.context_length for text in texts)
        if cut:
            hint = (
                f"; IMG2MUSIC_CLIP_CONTEXT_LENGTH={LONGCLIP_CONTEXT} stretches the text positions "
                "the LongCLIP way"
                if self.context_length < LONGCLIP_CONTEXT
                else ""
            )
            logger.warning(
                "%d of %d texts are longer than the %d tokens %s reads and were cut%s",
                cut, len(texts), self.context_length, self.name, hint,
            )

        def encode(batch: list[str]) -> torch.Tensor:
            tokens = self.clip.tokenizer(batch).to(self.device)
            features: torch.Tensor = self.clip.model.encode_text(tokens)
            return features

        return self._embed(texts, encode)

    def embed_images(self, images: Sequence[Image.Image]) -> npt.NDArray[np.float32]:
        """One row per image, whatever its mode (palette, alpha, CMYK, 16-bit)."""
        images = list(images)

        def encode(batch: list[Image.Image]) -> torch.Tensor:
            pixels = torch.stack([self.clip.preprocess(to_rgb(image)) for image in batch])
            features: torch.Tensor = self.clip.model.encode_image(pixels.to(self.device))
            return features

        return self._embed(images, encode)

    def _embed(
        self, items: list[Item], encode: Callable[[list[Item]], torch.Tensor]
    ) -> npt.NDArray[np.float32]:
        rows = [np.zeros((0, self.dimension), dtype=np.float32)]
        with torch.inference_mode():
            for start in range(0, len(items), self.batch_size):
                features = encode(items[start : start + self.batch_size]).float()
                rows.append(F.normalize(features, dim=-1).cpu().numpy())
        return np.concatenate(rows).astype(np.float32, copy=False)


def load_embedder(settings: Settings | None = None) -> Embedder:
    """The embedder the settings describe; its model is built once per process and space."""
    settings = settings or get_settings()
    try:
        device = resolve_device(settings.clip_device, name="clip_device")
    except DeviceUnavailable as error:
        raise EmbedderUnavailable(str(error)) from error
    clip = load_clip(
        settings.clip_model, settings.clip_pretrained, settings.clip_context_length, device
    )
    return Embedder(clip, batch_size=settings.clip_batch_size)


@lru_cache(maxsize=4)
def load_clip(
    model_name: str, pretrained: str, context_length: int | None, device: str
) -> LoadedClip:
    """Build a CLIP model for inference; cached, because building and loading take seconds."""
    model_name = model_name.replace("/", "-")  # open_clip's own spelling: ViT-B/32 is ViT-B-32
    config = open_clip.get_model_config(model_name)
    if config is None:
        raise EmbedderUnavailable(
            f"open_clip has no CLIP model {model_name!r}; open_clip.list_models() lists them, "
            f"and {TINY_MODEL!r} is the small offline one"
        )
    if pretrained.lower() == RANDOM_WEIGHTS:
        model, weights = _random_model(model_name), RANDOM_WEIGHTS
    elif open_clip.is_pretrained_cfg(model_name, pretrained):
        model, weights = _downloaded_model(model_name, pretrained)
    elif Path(pretrained).expanduser().is_file():
        model, weights = _checkpoint_model(model_name, Path(pretrained).expanduser())
    else:
        known = ", ".join(open_clip.list_pretrained_tags_by_model(model_name)) or "none"
        raise EmbedderUnavailable(
            f"clip_pretrained {pretrained!r} is neither an open_clip tag of {model_name} "
            f"(known: {known}) nor a checkpoint file; `none` gives random weights"
        )
    if context_length is not None and context_length > model.context_length:
        stretch_text_positions(model, context_length)
    model.eval().requires_grad_(False)
    model.to(device)
    preprocess = image_transform_v2(
        PreprocessCfg(**open_clip.get_model_preprocess_cfg(model)), is_train=False
    )
    return LoadedClip(
        model=model,
        preprocess=preprocess,
        tokenizer=open_clip.get_tokenizer(model_name, context_length=model.context_length),
        name=f"{model_name}|{weights}|ctx{model.context_length}",
        dimension=int(config["embed_dim"]),
        context_length=int(model.context_length),
        device=torch.device(device),
    )


def _random_model(model_name: str) -> Any:
    """Seeded random weights: the same in every process, so an index and its queries agree."""
    logger.warning(
        "CLIP model %s has random weights (clip_pretrained=none): embeddings are consistent "
        "but carry no meaning, so retrieval picks arbitrary examples",
        model_name,
    )
    # Modules are initialised on the CPU, so seeding (and restoring) the CPU generator suffices.
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(RANDOM_SEED)
        # No pretrained text tower either: `none` must not download anything.
        return open_clip.create_model(model_name, pretrained=None, pretrained_text=False)


def _downloaded_model(model_name: str, tag: str) -> tuple[Any, str]:
    """Weights for an open_clip tag, downloaded on first use and read from the cache after."""
    try:
        model = open_clip.create_model(model_name, pretrained=tag)
    except (RuntimeError, OSError) as error:  # open_clip reports download failures as these
        raise EmbedderUnavailable(
            f"Could not get the {tag!r} weights of CLIP model {model_name!r} ({error}). "
            "They download once from the Hugging Face Hub and need the network that time; "
            "for offline runs set IMG2MUSIC_CLIP_PRETRAINED=none (random weights, "
            "retrieval without meaning)."
        ) from error
    return model, tag.lower().replace("-", "_")


def _checkpoint_model(model_name: str, path: Path) -> tuple[Any, str]:
    """A local checkpoint, built with as many text positions as it has so none are re-stretched.

    The name records the file's SHA-256 rather than its path, so moving the file keeps an index
    valid while different weights under the same path do not pass for the same space.
    """
    try:
        state = _merge_longclip_positions(load_state_dict(str(path)))
        table = state.get("positional_embedding", state.get("text.positional_embedding"))
        positions = None if table is None else int(table.shape[0])
        model = open_clip.create_model(
            model_name, pretrained=None, pretrained_text=False, force_context_length=positions
        )
        model.load_state_dict(convert_state_dict(model, state), strict=True)
    except (RuntimeError, OSError, KeyError, ValueError, pickle.UnpicklingError) as error:
        raise EmbedderUnavailable(
            f"Checkpoint {path} does not load into CLIP model {model_name!r}: {error}"
        ) from error
    with path.open("rb") as file:
        digest = hashlib.file_digest(file, "sha256").hexdigest()[:16]
    return model, f"sha256:{digest}"


def _merge_longclip_positions(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LongCLIP's repository keeps the kept and the stretched positions in two tables; join them."""
    stretched = state.pop("positional_embedding_res", None)
    if stretched is not None:
        table = state["positional_embedding"].clone()
        table[LONGCLIP_KEEP:] = stretched[LONGCLIP_KEEP:]
        state["positional_embedding"] = table
    return state


def stretch_positions(
    table: torch.Tensor, target: int, keep: int = LONGCLIP_KEEP
) -> torch.Tensor:
    """LongCLIP's knowledge-preserving stretch of a positional table to `target` rows.

    Rows before `keep` stay. Tail row `j` of the new table takes the old tail at `j × s / t`
    (old tail length `s`, new tail length `t`), linearly interpolated and, past the last old row,
    extrapolated along the last step. For 77 → 248 this is LongCLIP's ×4: new row 20 + 4k is old
    row 20 + k, and the last four rows continue beyond old row 76.
    """
    head, tail = table[:keep], table[keep:].double()
    source, length = tail.shape[0], target - keep
    if source < 2 or length <= source:
        raise ValueError(f"cannot stretch {table.shape[0]} positions keeping {keep} to {target}")
    where = torch.arange(length, dtype=torch.float64, device=table.device) * source / length
    lower = where.floor().clamp(max=source - 2).long()
    weight = (where - lower).unsqueeze(1)
    stretched = tail[lower] * (1 - weight) + tail[lower + 1] * weight
    return torch.cat([head, stretched.to(table.dtype)])


def causal_mask(size: int, device: torch.device) -> torch.Tensor:
    """CLIP's additive causal mask: each position sees itself and the ones before it."""
    return torch.full((size, size), float("-inf"), device=device).triu_(1)


def stretch_text_positions(model: Any, target: int) -> None:
    """Give the model's text encoder `target` positions: the table, its mask and its length."""
    text = getattr(model, "text", model)  # CustomTextCLIP keeps its text encoder in `text`
    table = getattr(text, "positional_embedding", None)
    if not isinstance(table, torch.nn.Parameter) or getattr(text, "cls_emb", None) is not None:
        raise EmbedderUnavailable(
            f"{type(text).__name__} has no plain positional table to stretch; use a model with "
            "open_clip's own text transformer, or leave clip_context_length unset"
        )
    text.positional_embedding = torch.nn.Parameter(
        stretch_positions(table.detach(), target), requires_grad=False
    )
    if text.attn_mask is not None:
        text.attn_mask = causal_mask(target, table.device)
    text.context_length = target
    if hasattr(text, "num_pos"):
        text.num_pos = target
    model.context_length = target


def _token_count(tokenizer: Any, text: str) -> int:
    """Tokens a text needs, start and end included, before the tokenizer cuts it."""
    if isinstance(tokenizer, open_clip.SimpleTokenizer):
        return len(tokenizer.encode(text)) + 2
    # HFTokenizer and SigLipTokenizer wrap a transformers tokenizer that adds its own specials.
    return len(tokenizer.tokenizer(text)["input_ids"])
