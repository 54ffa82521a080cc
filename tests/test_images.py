"""Untrusted images: real photos open; junk, damage and bombs are refused in one line."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from matplotlib import cbook
from PIL import Image

from img2music.settings import Settings
from img2music.tools.images import BadImage, open_image

PHOTO = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_a_real_photo_opens_as_rgb() -> None:
    image = open_image(PHOTO)
    assert image.mode == "RGB" and image.size == (512, 600)


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("RGBA", "PNG"), ("P", "PNG"), ("L", "PNG"), ("LA", "PNG"), ("CMYK", "JPEG"),
     ("I;16", "PNG"), ("1", "PNG")],
)
def test_every_mode_becomes_rgb(mode: str, fmt: str) -> None:
    image = Image.open(PHOTO).convert(mode) if mode != "I;16" else \
        Image.open(PHOTO).convert("L").point(lambda v: v * 256).convert("I;16")
    opened = open_image(encoded(image, fmt))
    assert opened.mode == "RGB" and opened.size == (512, 600)


def test_transparency_lies_over_white() -> None:
    clear = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert open_image(encoded(clear, "PNG")).getpixel((0, 0)) == (255, 255, 255)


def test_an_animation_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in ("red", "blue")]
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert open_image(data).getpixel((0, 0)) == (255, 0, 0)


def test_exif_orientation_is_applied() -> None:
    wide = Image.new("RGB", (40, 10), "green")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    assert open_image(encoded(wide, "JPEG", exif=exif)).size == (10, 40)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "the file is empty"),
        (b"%PDF-1.4 not a picture at all", "not a usable image"),
        (PHOTO.read_bytes()[:20_000], "damaged or truncated"),
    ],
)
def test_junk_is_refused_in_one_line(data: bytes, message: str) -> None:
    with pytest.raises(BadImage, match=message) as raised:
        open_image(data)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("side", "message"),
    [(7_000, "7000×7000 pixels, over the 40,000,000-pixel limit"),
     (12_000, "over the 40,000,000-pixel limit \\(a possible decompression bomb\\)")],
)
def test_a_decompression_bomb_is_refused_before_decoding(side: int, message: str) -> None:
    bomb = encoded(Image.new("1", (side, side)), "PNG", optimize=True)
    assert len(bomb) < 100_000
    with pytest.raises(BadImage, match=message):
        open_image(bomb)


def test_size_limits_are_settings() -> None:
    with pytest.raises(BadImage, match="over the 1,000-byte limit"):
        open_image(PHOTO, settings=Settings(max_image_bytes=1_000))


def test_an_unreadable_path_is_named(tmp_path: Path) -> None:
    with pytest.raises(BadImage, match=r"cannot read .*missing\.jpg"):
        open_image(tmp_path / "missing.jpg")
