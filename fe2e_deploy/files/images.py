"""Input images: finding them under a folder and reading them fully decoded, as 8-bit RGB."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from ..errors import ImageError, InvalidInput, MissingInput

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

#: The largest input image read (width x height): 100 MP, e.g. 12000x8000. Its size is checked from the
#: header, before anything is decoded, so a decompression bomb (a small file that decodes to gigabytes)
#: fails as one unreadable image. Decoded and converted to RGB it takes 4 bytes per pixel, and its depth
#: and normal maps come back at its size (16 bytes per pixel in float32).
MAX_IMAGE_PIXELS = 100_000_000


class ImageTooLarge(ImageError):
    """An image with more pixels than allowed, refused from its header (before it is decoded)."""


#: Pillow modes of 16-bit grayscale PNGs (and their byte orders).
_UINT16_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def read_image(path: Path | BinaryIO, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open and fully decode an image (a path or binary file; truncated files fail here), as RGB (:func:`to_rgb`).

    Raises :class:`ImageTooLarge` (a ValueError) for an image over ``max_pixels``, before decoding it, and
    ValueError for one with no pixels.
    """
    with warnings.catch_warnings():
        # Pillow warns from 89 MP and refuses from 179 MP; the limit here is ours, and an error
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(path)
        except Image.DecompressionBombError as exc:  # far over the limit here
            raise ImageTooLarge(f"image is over the limit of {max_pixels / 1e6:.0f} megapixels: {exc}") from None
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLarge(
                f"image is {width}x{height} = {width * height / 1e6:.0f} megapixels, over the limit of "
                f"{max_pixels / 1e6:.0f} megapixels (a decompression bomb?); resize it first"
            )
        if width < 1 or height < 1:
            raise InvalidInput("empty image")
        image.load()
        return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """An image as 8-bit RGB, keeping the tones of 16-bit and 32-bit grayscale images.

    Pillow's ``convert("RGB")`` clips those to 0..255 (a 16-bit PNG becomes nearly all white). 16-bit
    values (PNG's ``I;16``, and mode ``I`` within 0..65535) are scaled by 255 / 65535 instead (rounded);
    other ``I`` images by their actual range. Pillow reads 16-bit RGB(A) PNGs as 8-bit already.
    """
    if image.mode not in _UINT16_MODES and image.mode != "I":
        return image.convert("RGB")
    values = np.asarray(image)
    low, high = int(values.min()), int(values.max())
    if image.mode in _UINT16_MODES or (low >= 0 and high <= 65535):
        gray = (values.astype(np.uint32) + 128) // 257  # round(v / 257), exactly (257 is odd: no ties)
    elif high > low:
        gray = np.round((values.astype(np.float32) - low) * np.float32(255.0 / (high - low))).clip(0, 255)
    else:
        gray = np.zeros_like(values)
    return Image.fromarray(gray.astype(np.uint8)).convert("RGB")


def find_images(root: str | Path) -> list[Path]:
    """Every .jpg/.jpeg/.png under ``root`` (recursively, case-insensitive), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise MissingInput(f"{root}: input folder not found")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


class UnreadableInput(ImageError):
    """An input file (image, ground truth, mask) that cannot be read; the message names the file.

    Commands that run over many images skip such a sample and report it (``evaluate``, ``compare``,
    ``calibrate``, like ``infer``); a command given one image fails with this message.
    """


def open_image(path: str | Path) -> Image.Image:
    """:func:`~fe2e_deploy.files.images.read_image` (fully decoded RGB), or :class:`UnreadableInput` naming it."""
    try:
        return read_image(Path(path))
    except READ_ERRORS as exc:
        raise UnreadableInput(f"{path}: {unreadable_image(exc, Path(path))}") from None


def check_image(path: str | Path) -> None:
    """Cheap check that ``path`` is an image PIL can open (header and, for PNG, chunk checksums; no decoding)."""
    try:
        with Image.open(path) as image:
            image.verify()
    except READ_ERRORS as exc:
        raise UnreadableInput(f"{path}: {unreadable_image(exc, Path(path))}") from None


def unreadable_image(exc: BaseException, path: Path | None) -> str:
    """Why an image could not be read, in the one wording every command reports (the caller names the file)."""
    return f"unreadable image ({reason_without_path(exc, path)})"


def reason_without_path(exc: BaseException, path: Path | None) -> str:
    """The library's message without the path it repeats (PIL: "cannot identify image file '<path>'"), or
    without the in-memory file it names (``<_io.BytesIO object at 0x...>``) when ``path`` is None."""
    text = str(exc)
    if path is not None and str(path):
        text = text.replace(f" '{path}'", "").replace(f" {path}", "")
    text = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", text).strip()
    return text or type(exc).__name__


#: What reading a broken or truncated file raises (PIL, numpy).
READ_ERRORS = (OSError, ValueError, EOFError, SyntaxError, Image.DecompressionBombError)
