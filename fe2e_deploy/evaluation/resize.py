"""``cv2.resize(x, (W, H), interpolation=cv2.INTER_LINEAR)`` on a float32 map, in numpy.

FE2E's evaluation (``infer/inner_evaluation.py``) resizes each depth prediction to its ground truth
with OpenCV. OpenCV is not a dependency of this toolkit (a 60 MB wheel for one function), so its
linear resize is written here. It is not ``F.interpolate``'s: out-of-range columns take the border
pixel alone and out-of-range rows clamp their indices, and the weights are float32.

The official code pins opencv-python 4.8.1.78, whose x86 wheels run this resize through Intel IPP
(not the ``resizeGeneric_`` C++ path): pixel centres are mapped in double precision, so a weight is
the float32 of an exact fraction (0.1, not the 0.0999756 of a float32 coordinate near 829.1). The
rule below reproduces those wheels to within 2e-7 relative on every case that
tests/test_evaluation_protocols.py checks (values recorded from opencv-python-headless 4.8.1.78:
shrinks, enlargements, 2x and non-integer factors); a float32-coordinate version differed by up
to 5e-5.
"""

from __future__ import annotations

import numpy as np


def _linear_taps(src: int, dst: int, clamp_weights: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output index: two source indices and their float32 weights.

    Columns (``clamp_weights``): outside the source the border pixel gets the whole weight. Rows keep
    their weights and clamp the source row indices instead (OpenCV's ``clip(sy, 0, H)``).
    """
    scale = 1.0 / (dst / src)  # OpenCV: inv_scale = (double)dst / src; scale = 1. / inv_scale
    f = (np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5
    first = np.floor(f).astype(np.int64)
    frac = f - first
    if clamp_weights:
        below = first < 0
        frac[below], first[below] = 0.0, 0
        above = first >= src - 1
        frac[above], first[above] = 0.0, src - 1
    weights = np.stack([1.0 - frac, frac]).astype(np.float32)
    return np.clip(first, 0, src - 1), np.clip(first + 1, 0, src - 1), weights


def cv2_resize_linear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``cv2.resize(x, size, interpolation=cv2.INTER_LINEAR)`` for an ``[H, W]`` map (float32); ``size`` is (W, H)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected an [H, W] map, got shape {x.shape}")
    (h, w), (dw, dh) = x.shape, size
    if (dh, dw) == (h, w):
        return x.copy()
    x0, x1, alpha = _linear_taps(w, dw, clamp_weights=True)
    rows = x[:, x0] * alpha[0] + x[:, x1] * alpha[1]  # horizontal pass, float32
    y0, y1, beta = _linear_taps(h, dh, clamp_weights=False)
    return rows[y0] * beta[0][:, None] + rows[y1] * beta[1][:, None]  # vertical pass, float32
