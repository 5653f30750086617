"""``batch``'s shard outputs: the maps of many images per file, as training pipelines read pseudo-labels.

Layout under OUT (every name is spelled in this module)::

    shard-000000.parquet  or  shard-000000.tar     the maps of up to --shard-size images
    _manifests/shard-000000.json                   written after its shard: the images in it (ShardManifest)

- **WebDataset** (``.tar``, the stdlib's ``tarfile``, uncompressed as WebDataset expects): per image,
  consecutive members ``KEY.depth.npy`` (float16 [H, W]), ``KEY.normals.npy`` ([H, W, 3], float16, or
  uint8 holding ``(n + 1) / 2 * 255`` as infer's normals PNG), optional ``KEY.depth.png`` /
  ``KEY.normals.png`` (8-bit previews, as infer's depth_colored / normals_png) and ``KEY.json``
  (``{"source", "height", "width"}``).
- **Parquet** (pyarrow): one row per image, columns ``key``, ``source``, ``height``, ``width``,
  ``depth`` and ``normals`` (the raw little-endian array bytes: ``np.frombuffer(row, dtype).reshape``;
  the dtypes are in the manifest and the file's metadata), and ``depth_png`` / ``normals_png`` with
  previews. Rows are grouped ``ROW_GROUP_IMAGES`` at a time, zstd-compressed.

KEY is the image's path under IMAGES without its suffix, as ``infer`` names outputs (``sub/x``; ``sub/x_jpg``
when ``x.jpg`` and ``x.png`` share a folder): WebDataset splits a member name at the first dot of its
base name, so dots in the base name become ``_``.

A shard appears complete or not at all (:meth:`~fe2e_deploy.cluster.stores.OutputStore.staged`); its
manifest is written after it, so a listed shard is complete. A resumed run reads the manifests (one listing
plus one small read per shard) and one listing of the shards' names and sizes (no shard is opened), skips the
images they list, redoes the shards that are missing or whose size is not the one their manifest records
(:class:`ShardState`), removes shard files without a manifest (left by a killed run) and numbers its shards
after the highest one there.

Names: the toolkit reads, counts and deletes only the names it writes, exactly (``shard-NNNNNN.parquet``,
``shard-NNNNNN.tar``, ``_manifests/shard-NNNNNN.json``: :func:`shard_number`, :func:`manifest_number`),
taken from listings of OUT, never a path read from a file: a manifest whose ``shard`` is not the shard its own
name says is refused (:func:`read_state`), so a planted manifest cannot make a run delete anything.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import tarfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import ClassVar

import numpy as np

from .. import __version__
from ..artifacts.contract import Contract, ContractError
from ..errors import InvalidInput
from ..files.colormaps import depth_preview, normals_preview
from ..files.png import png_bytes
from ..processing import Prediction
from .stores import OutputStore

#: --output-format values: files (infer's layout, one file per map) or a shard format.
OUTPUT_FORMATS = ("files", "parquet", "webdataset")
SHARD_SUFFIXES = {"parquet": ".parquet", "webdataset": ".tar"}
NORMALS_DTYPES = ("float16", "uint8")
#: Images per shard: 64 at 1024x768 are ~400 MB of float16 maps (WebDataset suggests shards of 100 MB - 1 GB).
DEFAULT_SHARD_SIZE = 64
MANIFEST_DIR = "_manifests"  # parquet and dataset readers skip names starting with "_"
_SHARD_NUMBER = re.compile(r"shard-(\d{6,})")  # the number in the names shard_name and manifest_name write
#: Parquet rows per row group (a reader's unit): 8 images at 1024x768 are ~50 MB of maps.
ROW_GROUP_IMAGES = 8
#: Threads reading manifests when a run resumes (object-store reads wait on the network).
MANIFEST_READERS = 16

# WebDataset member suffixes and Parquet columns of one image
DEPTH, NORMALS, DEPTH_PNG, NORMALS_PNG, INFO = "depth.npy", "normals.npy", "depth.png", "normals.png", "json"


@dataclass(frozen=True)
class ShardOptions:
    """A shard format (parquet|webdataset), its images per shard, the normals' dtype, PNG previews or not."""

    format: str
    shard_size: int = DEFAULT_SHARD_SIZE
    normals_dtype: str = "float16"
    previews: bool = False
    png_compression: int = 1

    def __post_init__(self) -> None:
        if self.format not in SHARD_SUFFIXES:
            raise InvalidInput(f"--output-format {self.format!r}: choose one of {', '.join(OUTPUT_FORMATS)}")
        if self.shard_size < 1:
            raise InvalidInput(f"--shard-size must be >= 1 (got {self.shard_size})")
        if self.normals_dtype not in NORMALS_DTYPES:
            raise InvalidInput(f"--normals-dtype {self.normals_dtype!r}: choose float16 or uint8")


def shard_name(index: int, fmt: str) -> str:
    return f"shard-{index:06d}{SHARD_SUFFIXES[fmt]}"


def manifest_name(shard: str) -> str:
    return f"{MANIFEST_DIR}/{PurePosixPath(shard).stem}.json"


def _number(rel: str) -> int | None:
    found = _SHARD_NUMBER.search(rel)
    return int(found.group(1)) if found else None


def shard_number(rel: str) -> int | None:
    """The number of a shard file named exactly as :func:`shard_name` names them (either format), else None."""
    number = _number(rel)
    return number if number is not None and rel in {shard_name(number, f) for f in SHARD_SUFFIXES} else None


def manifest_number(rel: str) -> int | None:
    """The number of a manifest named exactly as :func:`manifest_name` names them, else None."""
    number = _number(rel)
    return number if number is not None and rel == manifest_name(shard_name(number, "parquet")) else None


def image_key(rel: PurePosixPath, name: str) -> str:
    """The key of the image at ``rel`` whose outputs ``infer`` names ``name`` (see the module)."""
    return (rel.parent / name.replace(".", "_")).as_posix()


@dataclass(frozen=True)
class ShardManifest(Contract):
    """The images of one finished shard (written after the shard, atomically)."""

    FORMAT: ClassVar[str] = "fe2e-batch-shard"
    VERSION: ClassVar[int] = 1
    REBUILD: ClassVar[str] = "delete it and run `fe2e-deploy batch` again: its images are predicted again"
    WHAT: ClassVar[str] = "batch shard manifest"

    fe2e_deploy: str
    shard: str  # the shard's file name under OUT
    output_format: str
    depth_dtype: str
    normals_dtype: str
    previews: bool
    shard_bytes: int
    keys: list[str]
    sources: list[str] = field(default_factory=list)  # the images, relative to IMAGES (as keys)

    def dumps(self) -> bytes:
        return (json.dumps(self.to_json(), indent=1) + "\n").encode()


@dataclass
class Sample:
    """One image's maps as a shard stores them."""

    key: str
    source: str
    depth: np.ndarray  # float16 [H, W]
    normals: np.ndarray  # float16 or uint8 [H, W, 3]
    previews: dict[str, bytes] = field(default_factory=dict)  # DEPTH_PNG / NORMALS_PNG -> PNG bytes

    @classmethod
    def of(cls, key: str, source: str, prediction: Prediction, options: ShardOptions) -> Sample:
        depth = np.asarray(prediction.depth, dtype=np.float32)
        normals = np.asarray(prediction.normals, dtype=np.float32)
        # uint8: the 8-bit values of infer's normals_png
        stored = normals_preview(normals) if options.normals_dtype == "uint8" else normals.astype(np.float16)
        previews = {}
        if options.previews:
            previews[DEPTH_PNG] = png_bytes(depth_preview(depth), options.png_compression)
            previews[NORMALS_PNG] = png_bytes(normals_preview(normals), options.png_compression)
        return cls(key, source, depth.astype(np.float16), stored, previews)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


class WebDatasetWriter:
    """A tar of samples (members of one key consecutive, as WebDataset reads them)."""

    def __init__(self, path, options: ShardOptions) -> None:
        self.tar = tarfile.open(path, "w", format=tarfile.PAX_FORMAT)  # noqa: SIM115 (closed by close()); PAX: long keys

    def add(self, sample: Sample) -> None:
        height, width = sample.depth.shape
        info = {"source": sample.source, "height": height, "width": width}
        members = {DEPTH: _npy(sample.depth), NORMALS: _npy(sample.normals), **sample.previews}
        members[INFO] = json.dumps(info).encode()
        for suffix, data in members.items():
            member = tarfile.TarInfo(f"{sample.key}.{suffix}")
            member.size, member.mode = len(data), 0o644  # mtime 0, uid 0: the same maps give the same tar
            self.tar.addfile(member, io.BytesIO(data))

    def close(self) -> None:
        self.tar.close()


class ParquetWriter:
    """A Parquet file of samples, one row each, written ``ROW_GROUP_IMAGES`` rows at a time."""

    def __init__(self, path, options: ShardOptions) -> None:
        import pyarrow as pa  # noqa: PLC0415
        import pyarrow.parquet as pq  # noqa: PLC0415

        columns = [("key", pa.string()), ("source", pa.string()), ("height", pa.int32()), ("width", pa.int32())]
        columns += [("depth", pa.binary()), ("normals", pa.binary())]
        if options.previews:
            columns += [("depth_png", pa.binary()), ("normals_png", pa.binary())]
        layout = {"depth": "float16 [height, width]", "normals": f"{options.normals_dtype} [height, width, 3]"}
        self.schema = pa.schema(columns, metadata={"fe2e": json.dumps(layout)})
        small = ["key", "source", "height", "width"]  # dictionaries and min/max of the maps' bytes are useless
        self.writer = pq.ParquetWriter(
            path, self.schema, compression="zstd", use_dictionary=small[:2], write_statistics=small
        )
        self.rows: list[Sample] = []

    def add(self, sample: Sample) -> None:
        self.rows.append(sample)
        if len(self.rows) >= ROW_GROUP_IMAGES:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa  # noqa: PLC0415

        if not self.rows:
            return
        data = {
            "key": [s.key for s in self.rows],
            "source": [s.source for s in self.rows],
            "height": [s.depth.shape[0] for s in self.rows],
            "width": [s.depth.shape[1] for s in self.rows],
            "depth": [s.depth.astype("<f2").tobytes() for s in self.rows],
            "normals": [s.normals.astype(s.normals.dtype.newbyteorder("<")).tobytes() for s in self.rows],
        }
        if "depth_png" in self.schema.names:
            data["depth_png"] = [s.previews[DEPTH_PNG] for s in self.rows]
            data["normals_png"] = [s.previews[NORMALS_PNG] for s in self.rows]
        self.writer.write_table(pa.table(data, schema=self.schema))
        self.rows = []

    def close(self) -> None:
        self._flush()
        self.writer.close()


WRITERS = {"parquet": ParquetWriter, "webdataset": WebDatasetWriter}


class OpenShard:
    """A shard being written (see :func:`open_shard`): ``add`` samples; ``manifest`` is set once it is finished."""

    def __init__(self, writer) -> None:
        self.writer = writer
        self.keys: list[str] = []
        self.sources: list[str] = []
        self.manifest: ShardManifest | None = None

    def add(self, sample: Sample) -> None:
        self.writer.add(sample)
        self.keys.append(sample.key)
        self.sources.append(sample.source)


class _Empty(Exception):
    """No sample was added: the shard is dropped, not installed."""


@contextlib.contextmanager
def open_shard(store: OutputStore, index: int, options: ShardOptions) -> Iterator[OpenShard]:
    """Write shard ``index``: samples added in the block go to a staged file, which becomes the shard when the
    block succeeds (complete, or not at all), followed by its manifest. A shard with no sample is not written."""
    name = shard_name(index, options.format)
    try:
        with store.staged(name) as path:
            shard = OpenShard(WRITERS[options.format](path, options))
            try:
                yield shard
            finally:
                shard.writer.close()
            if not shard.keys:
                raise _Empty
            size = path.stat().st_size
    except _Empty:
        return
    shard.manifest = ShardManifest(
        fe2e_deploy=__version__,
        shard=name,
        output_format=options.format,
        depth_dtype="float16",
        normals_dtype=options.normals_dtype,
        previews=options.previews,
        shard_bytes=size,
        keys=shard.keys,
        sources=shard.sources,
    )
    store.put_bytes(manifest_name(name), shard.manifest.dumps())  # last: a listed shard is complete


@dataclass
class ShardState:
    """What an output folder holds: finished shards (by manifest), damaged ones, and the next free shard number.

    Every name here comes from a listing of the folder and is one the toolkit writes (see the module).
    """

    manifests: list[ShardManifest]  # finished shards: the file is there, of the size its manifest records
    damaged: list[tuple[ShardManifest, str]]  # manifests whose shard is missing or of another size, and why
    orphans: list[str]  # shard files without a manifest (a killed run's)
    shards: list[str]  # every shard file there (either format)
    manifest_files: list[str]  # every manifest file there
    next_index: int

    def done(self) -> dict[str, str]:
        """Image key -> the finished shard that holds it."""
        return {key: m.shard for m in self.manifests for key in m.keys}


def read_state(store: OutputStore, options: ShardOptions) -> ShardState:
    """The manifests under ``store`` (one listing, the manifests read in parallel) and its shard files (one
    listing, with their sizes).

    A manifest that is no valid JSON, breaks its contract, or whose ``shard`` is not the shard its own name says
    (``_manifests/shard-000005.json`` holds ``shard-000005.parquet`` or ``.tar``) is a :class:`ContractError`
    naming it; a folder holding shards of the other format is an :class:`InvalidInput`.
    """
    manifest_files = [rel for rel in store.list(MANIFEST_DIR, recursive=False) if manifest_number(rel) is not None]

    def read(rel: str) -> ShardManifest:
        where = store.describe(rel)
        try:
            document = json.loads(store.read_bytes(rel))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ContractError(f"{where}: not valid JSON ({exc}) ({ShardManifest.REBUILD})") from None
        manifest = ShardManifest.from_json(document, where)
        if manifest.output_format not in SHARD_SUFFIXES:
            raise ContractError(
                f"{where}: field 'output_format' is {manifest.output_format!r}, not one of "
                f"{', '.join(SHARD_SUFFIXES)} (rebuild it: {ShardManifest.REBUILD})"
            )
        expected = shard_name(manifest_number(rel), manifest.output_format)
        if manifest.shard != expected:
            raise ContractError(
                f"{where}: field 'shard' is {manifest.shard!r}, not {expected!r} (a manifest names its own "
                f"shard, shard-NNNNNN.parquet or .tar) (rebuild it: {ShardManifest.REBUILD})"
            )
        return manifest

    with ThreadPoolExecutor(MANIFEST_READERS) as pool:
        found = list(pool.map(read, manifest_files))
    other = [m for m in found if m.output_format != options.format]
    if other:
        raise InvalidInput(
            f"{store.describe()}: holds {other[0].output_format} shards ({other[0].shard}); "
            f"give --output-format {other[0].output_format} or another output folder"
        )
    sizes = {rel: size for rel, size in store.sizes().items() if shard_number(rel) is not None}
    finished, damaged = [], []
    for manifest in found:
        size = sizes.get(manifest.shard)
        if size is None:
            damaged.append((manifest, "missing"))
        elif size != manifest.shard_bytes:
            damaged.append((manifest, f"{size} bytes, but its manifest records {manifest.shard_bytes}"))
        else:
            finished.append(manifest)
    listed = {m.shard for m in found}
    numbers = [shard_number(name) for name in [*sizes, *listed]]
    orphans = [rel for rel in sizes if rel not in listed]
    return ShardState(finished, damaged, orphans, sorted(sizes), manifest_files, max(numbers, default=-1) + 1)
