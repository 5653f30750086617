"""Processing resolutions: FE2E's resize rule, and the ``WIDTHxHEIGHT`` spelling of options, files and manifests.

Pure Python (no torch), so the command line can parse options before any heavy import.
"""

from __future__ import annotations

from .config import RESOLUTION_MULTIPLE


def fe2e_processing_size(width: int, height: int) -> tuple[int, int]:
    """FE2E's resize rule (official ``input_process_image``): (width, height) to process at."""
    if width <= 1024 and height <= 768:
        return 1024, 768
    if width <= 1280 and height <= 960:
        return 1216, 352
    if width <= 6048 and height <= 4032:
        return 864, 576
    # Larger images are kept; the official code then fails unless both sides are multiples of 16.
    return (
        max(RESOLUTION_MULTIPLE, width // RESOLUTION_MULTIPLE * RESOLUTION_MULTIPLE),
        max(RESOLUTION_MULTIPLE, height // RESOLUTION_MULTIPLE * RESOLUTION_MULTIPLE),
    )


def resolution_name(size: tuple[int, int]) -> str:
    """(1024, 768) -> ``"1024x768"`` (the spelling of file names, manifests and options)."""
    return f"{size[0]}x{size[1]}"


def parse_resolution(text: str) -> tuple[int, int]:
    """``"1024x768"`` -> (1024, 768), both positive multiples of 16."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"resolution {text!r} is not WIDTHxHEIGHT (e.g. 1024x768)") from None
    if w <= 0 or h <= 0 or w % RESOLUTION_MULTIPLE or h % RESOLUTION_MULTIPLE:
        raise ValueError(f"resolution {text!r}: width and height must be positive multiples of {RESOLUTION_MULTIPLE}")
    return w, h
