"""Explanation maps drawn over the image: one heat map with its colour bar, or one small panel
per section on one colour scale; the title names the method (attention or CLIP relevance)."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter
from PIL import Image

from img2music.tools.files import replacing
from img2music.tools.images import to_rgb

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
