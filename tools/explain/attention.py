"""Where in the image the tune looked: the VLM's attention from the tune's tokens to the image.

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

`sections_of` (in `tools.abc.scan`) names the tune's sections; `token_spans_for` maps them to
the written tokens, so each section gets its own map.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from img2music.tools.abc.scan import Span

logger = logging.getLogger(__name__)

Grid = npt.NDArray[np.float32]


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
