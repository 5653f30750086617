"""The benchmarks' own layouts, read as FE2E's official loaders read them.

Depth (``infer/dataset/*.py``, Marigold's loaders): a folder (Marigold's evaluation tar, extracted)
and a split list, one sample a line, paths relative to the folder: ``rgb depth [filled]`` (NYUv2,
ScanNet: 16-bit PNG / 1000), ``rgb depth [focal]`` (KITTI: 16-bit PNG / 256; lines whose depth is
``None`` are dropped), ``rgb depth`` (ETH3D: raw float32, ``inf`` = no depth), ``rgb depth.npy
mask.npy`` (DIODE).

The folder may also be the tar archive itself, as downloaded (the official loaders read members
``./<path>``): :class:`TarFolder`.

Normals (``infer/dataset_normal/<set>/__init__.py``, DSINE's loaders): DSINE's ``dsine_eval/<set>``
folder and a split list of ``<scene>/<stem>_img.png`` lines (bundled: ``splits/``). Beside each
image: ``<stem>_normal.png`` (NYUv2, ScanNet; ``(n + 1) / 2 * 255``, valid where any channel is
non-zero) or else ``<stem>_normal.npy`` (x negated, valid where the norm is over 1e-6); ``.exr``
(iBims-1, Sintel; valid where the norm is over 0.5); ``.pkl`` (OASIS: a box of normals, x and y
negated, valid where non-zero). Everything is decoded in float32, as there.
"""

from __future__ import annotations

import io
import lzma
import pickle
import tarfile
import zlib
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InvalidInput, MissingInput
from ..files.images import UnreadableInput

#: What reading a damaged tar archive raises (plain, or compressed with gzip, bz2 or xz).
ARCHIVE_ERRORS = (OSError, EOFError, tarfile.TarError, zlib.error, lzma.LZMAError)

NORMAL_SUFFIXES = {"nyuv2": (".png", ".npy"), "scannet": (".png", ".npy"), "ibims": (".exr",), "sintel": (".exr",)}
NORMAL_SUFFIXES["oasis"] = (".pkl",)


def bundled_split(name: str) -> Path:
    """A split list bundled with the toolkit (FE2E's, see ``splits/README.md``)."""
    return Path(str(resources.files("fe2e_deploy.evaluation") / "splits" / f"{name}.txt"))


def read_split(path: Path) -> list[list[str]]:
    """The non-empty lines of a split list, split on whitespace."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise MissingInput(f"{path}: cannot read the split list ({exc.__class__.__name__})") from None
    rows = [line.split() for line in lines if line.strip()]
    if not rows:
        raise InvalidInput(f"{path}: the split list is empty")
    return rows


def depth_split_rows(path: Path, kind: str) -> list[tuple[str, str, str | None]]:
    """(image, depth, mask) relative paths of a Marigold split list for ``kind``."""
    rows = []
    for number, row in enumerate(read_split(path), 1):
        need = 3 if kind == "diode" else 2
        if len(row) < need:
            raise InvalidInput(f"{path}, line {number}: expected {need} paths for {kind}, got {' '.join(row)!r}")
        if kind == "kitti" and row[1] == "None":  # KITTIDataset drops samples without depth
            continue
        rows.append((row[0], row[1], row[2] if kind == "diode" else None))
    return rows


def normal_ground_truth(image: Path, dataset: str) -> Path:
    """The ground-truth file beside ``<stem>_img.<ext>``: the first of the set's suffixes that exists."""
    stem = image.name[: image.name.rindex("_img")]
    candidates = [image.with_name(f"{stem}_normal{suffix}") for suffix in NORMAL_SUFFIXES[dataset]]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        names = " or ".join(c.name for c in candidates)
        raise MissingInput(f"{candidates[0]}: normal ground truth not found for {image} (looked for {names})")
    return found


class TarFolder:
    """A Marigold evaluation tar read in place: members by their path relative to the archive's root."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.tar = tarfile.open(path)  # noqa: SIM115  kept open while the dataset is read
        except ARCHIVE_ERRORS as exc:
            raise InvalidInput(f"{path}: not a readable tar archive ({exc})") from None
        try:  # the index: every member's header, found past the data of the one before it
            self.members = {m.name.removeprefix("./"): m for m in self.tar.getmembers() if m.isfile()}
        except ARCHIVE_ERRORS as exc:
            self.tar.close()
            raise InvalidInput(f"{path}: truncated or corrupt tar archive ({exc})") from None

    def has(self, rel: str) -> bool:
        return rel in self.members

    def open(self, rel: str) -> io.BytesIO:
        """The member's bytes; FileNotFoundError names the archive and the member, and a member that cannot be
        read (cut short, corrupt) is :class:`UnreadableInput`: that sample alone fails."""
        if rel not in self.members:
            raise MissingInput(f"{self.path}: no member {rel!r}")
        try:
            return io.BytesIO(self.tar.extractfile(self.members[rel]).read())
        except ARCHIVE_ERRORS as exc:
            raise UnreadableInput(f"{self.path}: member {rel!r} is truncated or corrupt ({exc})") from None


def read_marigold_depth(source: Path | io.BytesIO, kind: str, image_size: tuple[int, int]) -> np.ndarray:
    """Depth in metres, float32, decoded as the official loader for ``kind`` does (``source``: a file or bytes)."""
    name = source if isinstance(source, Path) else "depth"
    if kind == "eth3d":  # raw float32; the official loader reshapes to 4032 x 6048, the images' size
        width, height = image_size
        raw = source.read_bytes() if isinstance(source, Path) else source.getvalue()
        if len(raw) != 4 * width * height:
            raise InvalidInput(f"{name}: {len(raw)} bytes, expected {height} x {width} float32 (the image's size)")
        depth = np.frombuffer(raw, dtype=np.float32).copy()
        depth[depth == np.inf] = 0.0
        return depth.reshape(height, width)
    if kind == "diode":
        return np.load(source).squeeze().astype(np.float32)
    with Image.open(source) as im:
        if im.mode not in ("I;16", "I;16B", "I;16L", "I"):
            raise InvalidInput(f"{name}: depth PNG must be 16-bit grayscale, got mode {im.mode}")
        raw = np.asarray(im)
    return (raw / (256.0 if kind == "kitti" else 1000.0)).astype(np.float32)


def read_official_normals(path: Path, image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Normals ``[H, W, 3]`` float32 and their valid pixels, decoded as DSINE's / FE2E's loader for the file."""
    suffix = path.suffix.lower()
    if suffix == ".png":
        with Image.open(path) as im:
            if im.mode != "RGB":
                raise InvalidInput(f"{path}: normal PNG must be 8-bit RGB, got mode {im.mode}")
            raw = np.asarray(im)
        return (raw.astype(np.float32) / 255.0) * 2.0 - 1.0, np.sum(raw, axis=2) > 0
    if suffix == ".npy":
        normal = np.load(path).astype(np.float32)
        if normal.ndim != 3 or normal.shape[2] != 3:
            raise InvalidInput(f"{path}: normals must be [H, W, 3], got shape {normal.shape}")
        normal[:, :, 0] *= -1.0  # GeoNet / FrameNet .npy normals have the opposite x axis
        return normal, np.linalg.norm(normal, axis=2) > 1e-6
    if suffix == ".exr":
        normal = read_exr_rgb(path)
        return normal, np.linalg.norm(normal, axis=2) > 0.5
    if suffix == ".pkl":
        return read_oasis_normals(path, image_size)
    raise InvalidInput(f"{path}: unknown normal ground-truth format {suffix!r}")


def read_exr_rgb(path: Path) -> np.ndarray:
    """The R, G, B channels of an OpenEXR file as float32 ``[H, W, 3]`` (what ``cv2.imread`` + BGR2RGB give)."""
    try:
        import OpenEXR  # noqa: PLC0415  optional: only iBims-1 and Sintel need it
    except ImportError:
        raise InvalidInput(f"{path}: reading .exr needs the OpenEXR package: pip install 'fe2e-deploy[eval]'") from None
    with OpenEXR.File(str(path)) as exr:  # the pixels are read while the file is open
        channels = {name: np.asarray(channel.pixels, dtype=np.float32) for name, channel in exr.channels().items()}
    if "RGB" in channels:
        return channels["RGB"]
    if not {"R", "G", "B"} <= set(channels):
        raise InvalidInput(f"{path}: expected R, G and B channels, found {', '.join(sorted(channels)) or 'none'}")
    return np.stack([channels[c] for c in "RGB"], axis=-1)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts of numbers and numpy arrays only: a .pkl file cannot run code here."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a normal file")
        return super().find_class(module, name)


def read_oasis_normals(path: Path, image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """OASIS: a dict with the box (``min_y``, ``max_y``, ``min_x``, ``max_x``, inclusive) and its ``normal``."""
    width, height = image_size
    with open(path, "rb") as f:
        try:
            data = _ArrayUnpickler(f).load()
        except OSError:
            raise
        except Exception as exc:  # whatever a corrupt or refused pickle raises, the file is bad
            raise InvalidInput(f"{path}: not a readable OASIS normal file ({type(exc).__name__}: {exc})") from None
    try:
        y0, y1, x0, x1 = (int(data[k]) for k in ("min_y", "max_y", "min_x", "max_x"))
        roi = np.asarray(data["normal"], dtype=np.float64)
    except (KeyError, TypeError, ValueError, IndexError):
        raise InvalidInput(f"{path}: expected a dict with min_y, max_y, min_x, max_x and normal") from None
    box = (y1 - y0 + 1, x1 - x0 + 1, 3)
    if roi.shape != box or min(y0, x0) < 0 or y1 >= height or x1 >= width:
        raise InvalidInput(
            f"{path}: normals {roi.shape} do not fill the box {box[:2]} at ({y0}, {x0}) of the {height} x {width} image"
        )
    normal = np.zeros((height, width, 3))
    normal[y0 : y1 + 1, x0 : x1 + 1, :] = roi
    normal = normal.astype(np.float32)
    normal[:, :, 0] *= -1  # to DSINE's axes, as the official loader
    normal[:, :, 1] *= -1
    mask = np.zeros((height, width))
    roi_mask = (roi[:, :, 0] != 0) | (roi[:, :, 1] != 0) | (roi[:, :, 2] != 0)
    mask[y0 : y1 + 1, x0 : x1 + 1] = roi_mask.astype(np.float32)
    return normal, mask > 0.5
