"""Opening untrusted images: one clear line for anything that is not a usable picture."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from img2music.settings import Settings, get_settings

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"})


def image_files(arguments: list[Path]) -> list[Path]:
    """Files as given; folders expanded to their images (by suffix, recursively, sorted)."""
    paths: list[Path] = []
    for argument in arguments:
        if argument.is_dir():
            paths.extend(sorted(p for p in argument.rglob("*")
                                if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()))
        else:
            paths.append(argument)
    return paths


class BadImage(ValueError):
    """The input is not an image img2music can use; the message says why in one line."""


def open_image(source: Path | bytes, *, settings: Settings | None = None) -> Image.Image:
    """An RGB image, upright, first frame of an animation; bombs, truncation and junk refused.

    Its metadata (EXIF with camera and location, comments) is dropped, so no copy img2music
    writes or sends carries it: PIL would keep a JPEG comment when the image is saved again.
    """
    settings = settings or get_settings()
    try:
        data = source if isinstance(source, bytes) else source.read_bytes()
    except OSError as error:
        raise BadImage(f"cannot read {source!s}: {error.strerror or error}") from error
    if not data:
        raise BadImage("the file is empty")
    if len(data) > settings.max_image_bytes:
        raise BadImage(f"the file is {len(data):,} bytes, over the "
                       f"{settings.max_image_bytes:,}-byte limit")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > settings.max_image_pixels:
                raise BadImage(f"the image is {width}×{height} pixels, over the "
                               f"{settings.max_image_pixels:,}-pixel limit")
            image.seek(0)
            image.load()
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise BadImage(f"the image is over the {settings.max_image_pixels:,}-pixel limit "
                       "(a possible decompression bomb)") from error
    except UnidentifiedImageError as error:
        raise BadImage("not a usable image: no image format recognised") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise BadImage(f"the image is damaged or truncated: {error}") from error
    picture = to_rgb(ImageOps.exif_transpose(image) or image)
    picture.info.clear()
    return picture


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB; transparency over white, as a viewer would show it."""
    if image.mode.startswith("I"):
        image = image.convert("I").point(lambda value: value / 256).convert("L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if "A" in image.getbands():
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, "white")
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image if image.mode == "RGB" else image.convert("RGB")
