"""Untrusted images in and out: opened with one clear line for anything that is not a usable
picture, and carried as JPEG bytes or base64 data URLs (what models, reports and requests use)."""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
import warnings
from pathlib import Path
from typing import Literal

from PIL import Image, ImageOps, UnidentifiedImageError

from img2music.settings import Settings, get_settings

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"})
DATA_URL = re.compile(r"data:(?P<media>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*),",
                      re.ASCII | re.IGNORECASE)
JPEG_QUALITY = 90
LOWEST_JPEG_QUALITY = 60  # below it a photo over the byte limit is made smaller instead


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


DataUrlProblem = Literal["not_a_data_url", "damaged", "not_an_image"]


class BadDataUrl(BadImage):
    """A data URL that holds no usable image: not a base64 data URL at all, base64 that is
    damaged, or something that is not an image (by its media type or its size)."""

    def __init__(self, message: str, problem: DataUrlProblem) -> None:
        super().__init__(message)
        self.problem: DataUrlProblem = problem


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


def jpeg_bytes(image: Image.Image, *, quality: int = JPEG_QUALITY) -> bytes:
    """The image as a JPEG file in memory, in RGB: no metadata travels with it."""
    buffer = io.BytesIO()
    to_rgb(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def data_url(data: bytes, media_type: str) -> str:
    """`data` as a base64 data URL of the given media type (`image/jpeg`, `audio/ogg`, …)."""
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


def image_data_url(image: Image.Image, *, max_pixels: int, max_bytes: int | None = None) -> str:
    """The image as a JPEG data URL within the model's pixel budget and, when given, a
    provider's limit on the URL's length, aspect kept.

    Downscaling here keeps requests and saved runs small; the model's processor would shrink
    a larger image anyway. Images are never upscaled. A photo over the byte limit is saved at a
    lower JPEG quality first, then smaller until it fits.
    """
    if max_pixels <= 0:
        raise ValueError(f"the pixel budget must be positive, not {max_pixels}")
    image = _within_pixels(to_rgb(image), max_pixels)
    quality = JPEG_QUALITY
    while True:
        url = data_url(jpeg_bytes(image, quality=quality), "image/jpeg")
        if max_bytes is None or len(url) <= max_bytes:
            return url
        if quality > LOWEST_JPEG_QUALITY:
            quality = max(LOWEST_JPEG_QUALITY, quality - 15)
        elif image.width * image.height > 1:
            pixels = image.width * image.height
            image = _within_pixels(image, min(pixels - 1, int(pixels * 0.9 * max_bytes / len(url))))
        else:
            raise ValueError(f"no JPEG fits in a {max_bytes:,}-byte data URL")


def _within_pixels(image: Image.Image, max_pixels: int) -> Image.Image:
    width, height = image.size
    if width * height <= max_pixels:
        return image
    scale = math.sqrt(max(1, max_pixels) / (width * height))
    size = (max(1, math.floor(width * scale)), max(1, math.floor(height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def data_url_bytes(url: str, *, max_bytes: int | None = None) -> bytes:
    """The bytes of a base64 data URL, refused in one line (`BadDataUrl`) when it is no data URL,
    names a media type other than an image, is not base64, holds more than `max_bytes`, or its
    base64 is damaged. A data URL without a media type holds text/plain (RFC 2397); white space
    in the base64 is ignored."""
    match = DATA_URL.match(url)
    if match is None:
        raise BadDataUrl("not a data URL (expected `data:image/...;base64,...`)",
                         "not_a_data_url")
    media = match["media"] or "text/plain"
    if not media.lower().startswith("image/"):
        raise BadDataUrl(f"the data URL holds {media}, not an image", "not_an_image")
    if ";base64" not in match["params"].lower():
        raise BadDataUrl("the data URL is not base64-encoded", "not_a_data_url")
    payload = "".join(url[match.end():].split())  # a tenth of re.sub's time on a photo's URL
    if max_bytes is not None and len(payload) > 4 * math.ceil(max_bytes / 3):
        raise BadDataUrl(f"the data URL holds more than the {max_bytes:,}-byte image limit",
                         "not_an_image")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        raise BadDataUrl(f"the data URL is not valid base64: {error}", "damaged") from error


def image_from_data_url(url: str, *, settings: Settings | None = None) -> Image.Image:
    """The image in a base64 data URL, opened with the same checks as an uploaded file."""
    settings = settings or get_settings()
    return open_image(data_url_bytes(url, max_bytes=settings.max_image_bytes), settings=settings)
