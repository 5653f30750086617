"""Input images: finding them under a folder and reading them fully decoded, as RGB."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def read_image(path: Path) -> Image.Image:
    """Open and fully decode an image (so truncated files fail here), as RGB."""
    with Image.open(path) as image:
        image.load()
        if image.width < 1 or image.height < 1:
            raise ValueError("empty image")
        return image.convert("RGB")


def find_images(root: str | Path) -> list[Path]:
    """Every .jpg/.jpeg/.png under ``root`` (recursively, case-insensitive), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: input folder not found")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
