"""Processing resolutions: FE2E's resize rule, and the ``WIDTHxHEIGHT`` spelling of options, files and manifests.

Pure Python (no torch), so the command line can parse options before any heavy import.
"""

from __future__ import annotations

from .config import RESOLUTION_MULTIPLE
from .errors import InvalidInput

#: The largest processing size (width x height, in pixels) an engine runs unless the user raises it
#: (``--max-processing-pixels``): 2048x2048 = 4.2 MP, 5.3x FE2E's largest size (1024x768). The cost grows
#: with the pixels (the FP32 VAE's activations) and faster in the DiT (attention over (w / 16) * (h / 16)
#: tokens per stream: 16384 at 2048x2048, 3072 at 1024x768). FE2E's rule keeps images over 6048x4032 at
#: their size, so without a limit a 48 MP photo would be processed at 48 MP.
MAX_PROCESSING_PIXELS = 2048 * 2048


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


def check_processing_pixels(
    size: tuple[int, int] | None, max_pixels: int, source: str, error: type[InvalidInput] = InvalidInput
) -> None:
    """Refuse a processing ``size`` over ``max_pixels`` with one line saying how to get past it.

    ``source`` says where the size comes from (``"--processing-res"``, ``"image 8000x6000 (FE2E's resize
    rule ...)"``). ``size=None`` (FE2E's rule, decided per image later) only checks ``max_pixels``.
    """
    if max_pixels < 1:
        raise InvalidInput(f"--max-processing-pixels must be >= 1, got {max_pixels}")
    if size is not None and size[0] * size[1] > max_pixels:
        raise error(
            f"{source}: processing at {resolution_name(size)} is {size[0] * size[1] / 1e6:.1f} MP, over the limit "
            f"of {max_pixels / 1e6:.1f} MP (--max-processing-pixels {max_pixels}); pass a smaller --processing-res "
            "(e.g. 1024x768), or raise --max-processing-pixels if the machine has the memory"
        )


def resolution_name(size: tuple[int, int]) -> str:
    """(1024, 768) -> ``"1024x768"`` (the spelling of file names, manifests and options)."""
    return f"{size[0]}x{size[1]}"


def parse_resolution(text: str) -> tuple[int, int]:
    """``"1024x768"`` -> (1024, 768), both positive multiples of 16."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InvalidInput(f"resolution {text!r} is not WIDTHxHEIGHT (e.g. 1024x768)") from None
    if w <= 0 or h <= 0 or w % RESOLUTION_MULTIPLE or h % RESOLUTION_MULTIPLE:
        raise InvalidInput(f"resolution {text!r}: width and height must be positive multiples of {RESOLUTION_MULTIPLE}")
    return w, h
