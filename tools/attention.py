"""Where in the image the tune looked: attention maps, and a CLIP fallback that is not attention.

The paper explains a tune with the mean, over layers, heads and the composed tune's tokens, of the
attention from those tokens to the image tokens (its equation 2). The published code took the
attentions of the describe step instead and called a drawing function that does not exist; here
the map comes from the compose step: a teacher-forced forward pass of a transformers copy of the
VLM over the prompt plus the tokens it wrote, with eager attention (the only implementation that
materialises the weights).

`image_attention` never holds the attention of more than one layer: a forward hook on each
decoder self-attention module reduces that layer's weights to the rows of the generated tokens
and the columns of the image tokens, summed over heads, adds them to one running total of shape
(generated tokens, image tokens) and drops the weights from the module's output, so neither the
decoder layer nor transformers' output recorders keep them. The forward runs with
`output_attentions=False` (transformers 5's eager attention returns the weights anyway), no KV
cache and only the last position's logits.

When no local copy of the model is available, `clip_patch_relevance` gives a different, cheaper
map: how similar each image patch's CLIP embedding is to the text's. It is named as a relevance
map everywhere because it says nothing about what the VLM attended to.
"""

from __future__ import annotations

import inspect
import logging
import math
import re
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter
from PIL import Image

from img2music.tools.embedder import Embedder
from img2music.tools.files import replacing
from img2music.tools.images import to_rgb

logger = logging.getLogger(__name__)

Grid = npt.NDArray[np.float32]
Span = tuple[str, int, int]

ATTENTION_TITLE = "attention of the tune's tokens to the image (mean over layers, heads, tokens)"
CLIP_TITLE = "CLIP patch relevance (not attention)"
COLOUR_MAP = "inferno"
OVERLAY_ALPHA = 0.55
DPI = 100
OVERLAY_INCHES = 8.0  # longest side of the image in an overlay
PANEL_INCHES = 3.0  # longest side of the image in a section panel
PANEL_GAP_INCHES = 0.1
PANEL_LABEL_INCHES = 0.3
COLOUR_BAR_INCHES = 1.1  # the strip right of the images: bar and tick labels
PANEL_COLUMNS = 4

_SECTION = re.compile(r"^[ \t]*%[ \t]*\[([^\]\n]+)\]", re.MULTILINE)
_VOICE = re.compile(r"^[ \t]*(?:V:[ \t]*([^\s\]]+)|\[V:[ \t]*([^\s\]]+))", re.MULTILINE)
_KEY = re.compile(r"^[ \t]*K:", re.MULTILINE)
# A blank line ends an ABC tune; a Markdown fence ends the block the model wrote it in.
_TUNE_END = re.compile(r"^[ \t]*(?:```.*)?$", re.MULTILINE)


class AttentionUnavailable(RuntimeError):
    """The model cannot give attention weights (not eager attention) or the inputs do not fit."""


@dataclass(frozen=True)
class ImageAttention:
    """Mean attention to each image token, on the image's merged patch grid (rows × columns).

    `grid` averages over all generated tokens, `sections` over each named span's tokens (a name
    that occurs in several spans, such as a voice written in blocks, averages over all of them).
    """

    grid: Grid
    sections: dict[str, Grid]
    layers: int
    heads: int
    tokens: int
    image_tokens: int


def image_attention(
    model: Any,
    inputs: Mapping[str, Any],
    generated_ids: Sequence[int] | torch.Tensor,
    image_token_id: int,
    *,
    token_spans: Iterable[Span] | None = None,
    merge_size: int | None = None,
) -> ImageAttention:
    """The paper's equation 2 for the tokens the model wrote, one layer's weights at a time.

    `inputs` is the processor's output for the prompt (one conversation, one image);
    `generated_ids` the tokens written after it; `token_spans` names ranges of those tokens
    (indices into `generated_ids`, end exclusive), e.g. from `token_spans_for`. The hooks sit
    on the model for the duration of the pass, so nothing else may run the model meanwhile
    (`LocalVLM` holds its lock).
    """
    batch, rows, columns, grid_shape = _prepare(
        model, inputs, generated_ids, image_token_id, merge_size
    )
    attention_modules = _decoder_attention_modules(model)
    total = _RunningTotal(rows, _column_selector(columns))
    handles = [module.register_forward_hook(total, prepend=True) for module in attention_modules]
    try:
        with torch.inference_mode():
            model(**batch, output_attentions=False, use_cache=False, **_last_logit_only(model))
    finally:
        for handle in handles:
            handle.remove()
    if total.sum is None:
        raise AttentionUnavailable("the forward pass reached no decoder attention module")
    per_token = (total.sum / total.layers).cpu().numpy()
    return _result(per_token, token_spans, grid_shape, total.layers, total.heads)


class _RunningTotal:
    """Forward hook: adds one layer's head-summed attention of the generated rows to the image."""

    def __init__(self, rows: slice, columns: slice | torch.Tensor) -> None:
        self.rows = rows
        self.columns = columns
        self.sum: torch.Tensor | None = None
        self.layers = 0
        self.heads = 0

    def __call__(self, module: torch.nn.Module, args: Any, output: Any) -> Any:
        weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        if not isinstance(weights, torch.Tensor):
            raise AttentionUnavailable(
                f"{type(module).__name__} returned no attention weights: load the model with "
                "eager attention (LocalVLM.load(..., attention=True))"
            )
        # A view when the image columns are contiguous (Qwen2-VL's are), so only the
        # (tokens × image tokens) sum is allocated.
        chosen = weights[0, :, self.rows, self.columns]
        layer = chosen.sum(dim=0, dtype=torch.float32) / weights.shape[1]
        self.sum = layer if self.sum is None else self.sum.add_(layer)
        self.layers += 1
        self.heads = weights.shape[1]
        # Nothing downstream (decoder layer, output recorders) gets to keep this layer's weights.
        return (output[0], None, *output[2:])


def _prepare(
    model: Any,
    inputs: Mapping[str, Any],
    generated_ids: Sequence[int] | torch.Tensor,
    image_token_id: int,
    merge_size: int | None,
) -> tuple[dict[str, Any], slice, torch.Tensor, tuple[int, int]]:
    """Prompt plus generated tokens as one batch; rows, image columns and the merged grid."""
    prompt = inputs["input_ids"]
    if prompt.dim() != 2 or prompt.shape[0] != 1:
        raise AttentionUnavailable("attention maps are computed for one conversation at a time")
    generated = torch.as_tensor(generated_ids, dtype=prompt.dtype, device=prompt.device)
    generated = generated.reshape(1, -1)
    if generated.shape[1] == 0:
        raise AttentionUnavailable("no generated tokens to explain")
    if bool((generated == image_token_id).any()):
        raise AttentionUnavailable("the generated tokens contain the image placeholder token")
    columns = (prompt[0] == image_token_id).nonzero().flatten()
    grid_shape = _merged_grid(inputs.get("image_grid_thw"), _merge_size(model, merge_size))
    if columns.numel() != grid_shape[0] * grid_shape[1]:
        raise AttentionUnavailable(
            f"the prompt has {columns.numel()} image tokens, but the image grid "
            f"{grid_shape[0]}×{grid_shape[1]} needs {grid_shape[0] * grid_shape[1]}"
        )
    device = model.device
    batch: dict[str, Any] = {}
    for key, value in inputs.items():
        aligned = isinstance(value, torch.Tensor) and value.shape == prompt.shape
        if aligned and key != "input_ids" and not value.is_floating_point():
            # Masks and token types run alongside the ids: generated tokens are plain text.
            fill = torch.full_like(generated, 1 if key == "attention_mask" else 0)
            value = torch.cat([value, fill.to(value.dtype)], dim=1)
        batch[key] = value.to(device) if isinstance(value, torch.Tensor) else value
    batch["input_ids"] = torch.cat([prompt, generated], dim=1).to(device)
    rows = slice(prompt.shape[1], prompt.shape[1] + generated.shape[1])
    return batch, rows, columns.to(device), grid_shape


def _merge_size(model: Any, merge_size: int | None) -> int:
    if merge_size is not None:
        return merge_size
    vision = getattr(model.config, "vision_config", None)
    found = getattr(vision, "spatial_merge_size", None)
    if not isinstance(found, int):
        raise AttentionUnavailable(
            f"{type(model).__name__}'s config has no vision_config.spatial_merge_size; "
            "pass merge_size"
        )
    return found


def _merged_grid(image_grid_thw: Any, merge_size: int) -> tuple[int, int]:
    """Rows and columns of image tokens: the patch grid after merging merge × merge patches."""
    if not isinstance(image_grid_thw, torch.Tensor) or image_grid_thw.shape != (1, 3):
        raise AttentionUnavailable("attention maps need exactly one image (one image_grid_thw row)")
    frames, height, width = (int(value) for value in image_grid_thw[0])
    if frames != 1:
        raise AttentionUnavailable("attention maps are for still images, not videos")
    return height // merge_size, width // merge_size


def _column_selector(columns: torch.Tensor) -> slice | torch.Tensor:
    """A slice when the image tokens are one run, so indexing the weights copies nothing."""
    first, last = int(columns[0]), int(columns[-1])
    return slice(first, last + 1) if last - first + 1 == columns.numel() else columns


def _decoder_attention_modules(model: Any) -> list[torch.nn.Module]:
    """The language model's self-attention modules; the vision tower's are not wanted."""
    decoder = model.get_decoder()
    modules = [module for name, module in decoder.named_modules() if name.endswith("self_attn")]
    if not modules:
        raise AttentionUnavailable(
            f"found no `self_attn` modules in {type(decoder).__name__}, the decoder of "
            f"{type(model).__name__}"
        )
    return modules


def _last_logit_only(model: Any) -> dict[str, int]:
    """Only the last position's logits, where the model allows it: the pass needs none.

    All positions' logits would be sequence × vocabulary floats: GBs for a long tune.
    """
    accepts = "logits_to_keep" in inspect.signature(model.forward).parameters
    return {"logits_to_keep": 1} if accepts else {}


def _result(
    per_token: npt.NDArray[np.float32],
    token_spans: Iterable[Span] | None,
    grid_shape: tuple[int, int],
    layers: int,
    heads: int,
) -> ImageAttention:
    """Averages over all tokens and over each named group of spans, on the merged grid."""
    tokens = per_token.shape[0]
    groups: dict[str, npt.NDArray[np.bool_]] = {}
    for name, start, end in token_spans or ():
        if not 0 <= start < end <= tokens:
            raise ValueError(f"span {name!r} [{start}, {end}) is outside the {tokens} tokens")
        groups.setdefault(name, np.zeros(tokens, dtype=bool))[start:end] = True

    def grid(rows: npt.NDArray[np.float32]) -> Grid:
        mean: Grid = np.asarray(rows.mean(axis=0, dtype=np.float64), dtype=np.float32)
        return mean.reshape(grid_shape)

    return ImageAttention(
        grid=grid(per_token),
        sections={name: grid(per_token[mask]) for name, mask in groups.items()},
        layers=layers,
        heads=heads,
        tokens=tokens,
        image_tokens=per_token.shape[1],
    )


def clip_patch_relevance(embedder: Embedder, image: Image.Image, text: str) -> Grid:
    """Cosine similarity of the text's CLIP embedding with each patch's, min-max scaled to [0, 1].

    A fallback when no local VLM is available, and not attention: it shows which patches CLIP
    finds close to the text. The image is squashed to the model's square input instead of
    centre-cropped, so the grid covers the whole picture.
    """
    visual = embedder.clip.model.visual
    if not hasattr(visual, "forward_intermediates") or not hasattr(visual, "grid_size"):
        raise ValueError(f"{type(visual).__name__} is not a ViT with patch tokens")
    height, width = visual.image_size
    squashed = to_rgb(image).resize((width, height), Image.Resampling.BICUBIC)
    pixels = embedder.clip.preprocess(squashed).unsqueeze(0).to(embedder.device)
    with torch.inference_mode():
        # The last block's patch tokens after the final norm: what the class token is pooled from.
        features = visual.forward_intermediates(
            pixels, indices=1, normalize_intermediates=True, intermediates_only=True,
            output_fmt="NLC",
        )
        patches: torch.Tensor = features["image_intermediates"][-1][0]
        if visual.proj is not None:
            patches = patches @ visual.proj
        patches = F.normalize(patches.float(), dim=-1).cpu()
    text_vector = torch.from_numpy(embedder.embed_texts([text])[0])
    similarity = (patches @ text_vector).numpy().reshape(tuple(visual.grid_size))
    low, high = float(similarity.min()), float(similarity.max())
    scaled: Grid = ((similarity - low) / (high - low) if high > low
                    else np.zeros_like(similarity)).astype(np.float32)
    return scaled


def draw_overlay(image: Image.Image, grid: npt.NDArray[Any], out: Path, *, title: str) -> Path:
    """The grid as a heat map over the image, with a colour bar; the title names the method."""
    rgb = to_rgb(image)
    scale = OVERLAY_INCHES / max(rgb.size)
    image_w, image_h = rgb.width * scale, rgb.height * scale
    title_text, title_h = _wrapped_title(title, image_w)
    fig_w, fig_h = image_w + COLOUR_BAR_INCHES, image_h + title_h
    figure = _figure(fig_w, fig_h, title_text)
    norm = _norm([grid])
    _draw_heat(figure.add_axes((0, 0, image_w / fig_w, image_h / fig_h)), rgb, grid, norm)
    _colour_bar(figure, norm, left=image_w, bottom=0.1 * image_h, height=0.8 * image_h)
    return _save(figure, out)


def draw_section_overlays(
    image: Image.Image,
    grids: Mapping[str, npt.NDArray[Any]],
    out: Path,
    *,
    title: str = ATTENTION_TITLE,
) -> Path:
    """One small panel per section on one colour scale, so sections can be compared."""
    if not grids:
        raise ValueError("no sections to draw")
    rgb = to_rgb(image)
    scale = PANEL_INCHES / max(rgb.size)
    panel_w, panel_h = rgb.width * scale, rgb.height * scale
    cell_w, cell_h = panel_w + PANEL_GAP_INCHES, panel_h + PANEL_LABEL_INCHES
    columns = min(PANEL_COLUMNS, len(grids))
    rows = -(-len(grids) // columns)
    title_text, title_h = _wrapped_title(title, columns * cell_w)
    fig_w, fig_h = columns * cell_w + COLOUR_BAR_INCHES, rows * cell_h + title_h
    figure = _figure(fig_w, fig_h, title_text)
    norm = _norm(grids.values())
    for index, (name, grid) in enumerate(grids.items()):
        row, column = divmod(index, columns)
        left, bottom = column * cell_w, fig_h - title_h - (row + 1) * cell_h
        axes = figure.add_axes((left / fig_w, bottom / fig_h, panel_w / fig_w, panel_h / fig_h))
        _draw_heat(axes, rgb, grid, norm)
        axes.set_title(name, fontsize=9)
    panels_h = rows * cell_h
    _colour_bar(figure, norm, left=columns * cell_w, bottom=0.1 * panels_h, height=0.8 * panels_h)
    return _save(figure, out)


def _wrapped_title(title: str, width_inches: float) -> tuple[str, float]:
    """The title wrapped to the figure's width (10 pt: about 12 characters an inch), its height."""
    text = textwrap.fill(title, width=max(24, int(width_inches * 12)))
    return text, 0.25 + 0.2 * (text.count("\n") + 1)


def _figure(width: float, height: float, title: str) -> Figure:
    """A figure of exact size in inches (no pyplot, no tight bounding box: layout is ours)."""
    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    figure.suptitle(title, fontsize=10, y=1 - 0.1 / height, va="top")
    return figure


def _norm(grids: Iterable[npt.NDArray[Any]]) -> Normalize:
    values = [np.asarray(grid, dtype=np.float64) for grid in grids]
    low = min(float(value.min()) for value in values)
    high = max(float(value.max()) for value in values)
    return Normalize(vmin=low, vmax=high if high > low else low + 1e-12)


def _draw_heat(axes: Axes, rgb: Image.Image, grid: npt.NDArray[Any], norm: Normalize) -> None:
    axes.imshow(rgb)
    axes.imshow(_upsample(grid, rgb.size), cmap=COLOUR_MAP, norm=norm, alpha=OVERLAY_ALPHA)
    axes.set_axis_off()


def _colour_bar(figure: Figure, norm: Normalize, *, left: float, bottom: float,
                height: float) -> None:
    """A colour bar in the strip right of the images; positions in inches.

    Attention means differ in the fourth or fifth decimal, so the labels get as many decimals
    as the range needs to tell ticks apart.
    """
    fig_w, fig_h = figure.get_size_inches()
    axes = figure.add_axes(((left + 0.15) / fig_w, bottom / fig_h, 0.15 / fig_w, height / fig_h))
    step = ((norm.vmax or 0.0) - (norm.vmin or 0.0)) / 5
    decimals = min(8, max(0, math.ceil(-math.log10(step))))
    figure.colorbar(ScalarMappable(norm=norm, cmap=COLOUR_MAP), cax=axes,
                    format=FormatStrFormatter(f"%.{decimals}f"))


def _save(figure: Figure, out: Path) -> Path:
    with replacing(out) as temporary:
        figure.savefig(temporary, format="png")
    return out


def _upsample(grid: npt.NDArray[Any], size: tuple[int, int]) -> npt.NDArray[np.float32]:
    """Bilinear to the image's size (no overshoot, unlike bicubic): a smooth, honest heat map."""
    layer = Image.fromarray(np.asarray(grid, dtype=np.float32))
    return np.asarray(layer.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)


def sections_of(abc: str) -> list[Span]:
    """Character spans of the tune's `% [section]` blocks, or else of its `V:` voices.

    A span runs from its marker line to the next marker, a blank line (the end of an ABC tune)
    or a Markdown fence. Voice lines before the first `K:` only declare voices and are skipped;
    a voice written in several blocks gives several spans with one name (`V:1`).
    """
    markers = [(match.group(1).strip(), match.start()) for match in _SECTION.finditer(abc)]
    if not markers:
        key = _KEY.search(abc)
        body = key.end() if key else 0
        markers = [
            (f"V:{match.group(1) or match.group(2)}", match.start())
            for match in _VOICE.finditer(abc, body)
        ]
    spans: list[Span] = []
    for index, (name, start) in enumerate(markers):
        limit = markers[index + 1][1] if index + 1 < len(markers) else len(abc)
        line_end = abc.find("\n", start)
        end = _TUNE_END.search(abc, line_end + 1, limit) if 0 <= line_end < limit else None
        spans.append((name, start, end.start() if end else limit))
    return spans


def token_spans_for(
    text: str, tokenizer_offsets: Sequence[tuple[int, int]], spans: Iterable[Span]
) -> list[Span]:
    """Character spans as token index spans, from a fast tokenizer's offset mapping of `text`.

    A token belongs to a span when its characters overlap it; tokens without characters
    (special tokens, offsets (0, 0)) belong to none. Spans that no token reaches are dropped.
    """
    offsets = np.asarray(tokenizer_offsets, dtype=np.int64).reshape(-1, 2)
    if offsets.size and int(offsets.max()) > len(text):
        raise ValueError("the offsets reach past the end of the text: not this text's offsets")
    starts, ends = offsets[:, 0], offsets[:, 1]
    token_spans: list[Span] = []
    for name, start, end in spans:
        inside = np.flatnonzero((starts < end) & (ends > start) & (ends > starts))
        if inside.size:
            token_spans.append((name, int(inside[0]), int(inside[-1]) + 1))
    return token_spans
