"""Streaming, strict loading of official safetensors checkpoints into meta-built models."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from tqdm import tqdm

from ..errors import InvalidInput
from ..load_gate import opening
from .dtypes import ACCEPTED, STORAGE_DTYPES, unsupported, usable_dtype
from .layout import CheckpointLayout


class CheckpointError(InvalidInput):
    """A checkpoint file that is missing, corrupt, or does not match the model config."""


def _listing(names: set[str] | list[str], limit: int = 8) -> str:
    names = sorted(names)
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def read_weight_map(index: Path) -> dict[str, str]:
    """The ``weight_map`` of a ``.safetensors.index.json``: tensor name -> shard file name (in the index's folder).

    Anything else (not JSON, no ``weight_map`` object, an empty one, a shard that is not a plain
    ``.safetensors`` file name) is a :class:`CheckpointError` naming the index.
    """
    what = "not a safetensors index"
    try:
        document = json.loads(index.read_text())
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{index}: {what} (not a text file: {exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{index}: {what} (invalid JSON: {exc})") from None
    weight_map = document.get("weight_map") if isinstance(document, dict) else None
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index}: {what} (no 'weight_map' object of tensor name -> shard file)")
    if not weight_map:
        raise CheckpointError(f"{index}: the weight_map lists no tensors")
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or Path(shard).name != shard or not shard.endswith(".safetensors"):
            raise CheckpointError(
                f"{index}: tensor {name!r} maps to {shard!r}, not a .safetensors file name in the index's folder"
            )
    return weight_map


class ShardedCheckpoint:
    """A sharded checkpoint (``*.safetensors.index.json`` + shards) behind the ``safe_open`` interface we use."""

    def __init__(self, index: Path):
        self.index, self.weight_map = index, read_weight_map(index)
        self._handles = {}
        for name in sorted(set(self.weight_map.values())):
            shard = index.parent / name
            if not shard.is_file():
                raise CheckpointError(f"{shard}: shard listed in {index} not found")
            self._handles[name] = open_safetensors(shard)

    def __enter__(self) -> ShardedCheckpoint:
        for handle in self._handles.values():
            handle.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles.values():
            handle.__exit__(*exc)

    def keys(self) -> list[str]:
        return list(self.weight_map)

    def get_slice(self, name: str):
        return self._handles[self.weight_map[name]].get_slice(name)

    def get_tensor(self, name: str) -> torch.Tensor:
        return self._handles[self.weight_map[name]].get_tensor(name)


def open_safetensors(path):
    """``safe_open`` with errors that name the file; a ``.index.json`` opens the sharded checkpoint it lists.

    An object that already offers ``keys`` / ``get_slice`` / ``get_tensor`` (e.g.
    :class:`fe2e_deploy.synthetic.SyntheticCheckpoint`) is returned as it is.
    """
    if not isinstance(path, str | Path):
        return path
    path = Path(path)
    check_readable(path)
    if path.name.endswith(".index.json"):
        return ShardedCheckpoint(path)
    opening("safetensors checkpoint", path)
    try:
        return CheckedSafetensors(path, safe_open(str(path), framework="pt", device="cpu"))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc


def check_readable(path: Path, what: str = "file") -> None:
    """Raise a :class:`CheckpointError` naming ``path`` unless it is a file this process may read.

    safetensors reports a file without read permission as "No such file or directory"; opening it
    here first tells the two apart.
    """
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} not found" if not path.is_dir() else f"{path}: is a folder, not a file")
    try:
        with open(path, "rb"):
            pass
    except PermissionError as exc:
        raise CheckpointError(f"{path}: permission denied (the {what} exists but cannot be read)") from exc
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror or exc})") from exc


def non_finite(tensor: torch.Tensor) -> str | None:
    """None if ``tensor`` holds no NaN / Inf (integer tensors never do), else how many it holds.

    A NaN or Inf anywhere makes the sum NaN or Inf, so one sum decides (about 15 GB/s per CPU core,
    50x faster than ``isfinite().all()`` on BF16: reading the 25 GB checkpoint dominates); only a
    non-finite sum (or an overflowing one) is looked at element by element.
    """
    if not tensor.is_floating_point():
        return None
    if tensor.element_size() == 1:  # FP8: no reduction kernels; float16 holds every FP8 value exactly
        tensor = tensor.to(torch.float16)
    if bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all()):
        return None
    nan = int(torch.isnan(tensor).sum())
    return f"{nan} NaN and {int(torch.isinf(tensor).sum())} Inf of {tensor.numel()} values"


class CheckedSafetensors:
    """An opened safetensors file (``safe_open``) whose ``get_tensor`` refuses NaN / Inf, naming file and tensor.

    Every reader of official checkpoints, LoRAs and stripped folders opens files through
    :func:`open_safetensors`, so a corrupt or diverged tensor stops loading, ``strip`` and
    ``merge-lora`` instead of flowing into NaN outputs.
    """

    def __init__(self, path: Path, handle):
        self.path, self._handle = path, handle

    def __enter__(self) -> CheckedSafetensors:
        self._handle.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._handle.__exit__(*exc)

    def __str__(self) -> str:
        return str(self.path)

    def keys(self) -> list[str]:
        return self._handle.keys()

    def metadata(self) -> dict[str, str] | None:
        return self._handle.metadata()

    def get_slice(self, name: str):
        return self._handle.get_slice(name)

    def get_tensor(self, name: str) -> torch.Tensor:
        tensor = self._handle.get_tensor(name)
        problem = non_finite(tensor)
        if problem:
            raise CheckpointError(f"{self.path}: tensor {name} contains NaN or Inf ({problem}): corrupt or diverged")
        return tensor


def check_names_and_shapes(path: str | Path, handle, expected: dict[str, tuple[int, ...]], what: str) -> None:
    """Raise naming every missing, unexpected or misshaped tensor (reads headers only)."""
    keys = set(handle.keys())
    problems = []
    missing, unexpected = set(expected) - keys, keys - set(expected)
    if missing:
        problems.append(f"{len(missing)} missing tensor(s): {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s): {_listing(unexpected)}")
    wrong = [
        f"{name} has shape {list(shape)}, expected {list(expected[name])}"
        for name in sorted(keys & set(expected))
        if tuple(shape := handle.get_slice(name).get_shape()) != tuple(expected[name])
    ]
    if wrong:
        problems.append(f"{len(wrong)} tensor(s) with the wrong shape: " + "; ".join(wrong[:8]))
    if problems:
        raise CheckpointError(f"{path}: does not match the {what} of the model config:\n  - " + "\n  - ".join(problems))


def storage_dtypes(path: str | Path, handle, names) -> dict[str, torch.dtype]:
    """Name -> stored dtype of ``names`` from the header; a one-line error names the first tensor of another dtype.

    A source without dtypes in its slices (a synthetic checkpoint, generated in FP32) is taken as FP32.
    """
    dtypes = {}
    for name in sorted(names):
        info = handle.get_slice(name)
        code = info.get_dtype() if hasattr(info, "get_dtype") else "F32"
        problem = unsupported(code)
        if problem:
            raise CheckpointError(f"{path}: tensor {name} {problem}")
        dtypes[name] = STORAGE_DTYPES[code]
    return dtypes


def set_tensor(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Replace a (meta) parameter or buffer by ``value`` without copying into the old storage."""
    owner_name, _, leaf = name.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    if leaf in owner._parameters:
        owner._parameters[leaf] = nn.Parameter(value, requires_grad=False)
    elif leaf in owner._buffers:
        owner._buffers[leaf] = value
    else:
        raise KeyError(name)


def load_into(
    model: nn.Module,
    layout: CheckpointLayout,
    path: str | Path,
    dtype: torch.dtype | None,
    device: torch.device | str = "cpu",
    what: str = "checkpoint",
    progress: bool = True,
) -> nn.Module:
    """Fill ``model`` (built on meta) from the official file at ``path`` (or an opened source), one tensor at a time.

    Peak memory is the model in ``dtype`` plus one source tensor and its cast: safetensors memory-maps
    the file. ``dtype`` None keeps the stored dtype, except FP8 (the official FP8-stored DiT), which is
    upcast to BF16, exactly: FP8 is a storage format here, not a compute dtype.
    """
    expected = layout.official_shapes()
    with open_safetensors(path) as handle:
        check_names_and_shapes(path, handle, expected, what)
        storage_dtypes(path, handle, expected)  # every dtype from the header, before the long part
        label = Path(path).name if isinstance(path, str | Path) else str(path)
        for name in tqdm(sorted(expected), desc=f"loading {label}", disable=not progress, leave=False):
            try:
                tensor = handle.get_tensor(name)  # a file's handle refuses NaN / Inf (CheckedSafetensors)
            except CheckpointError:
                raise
            except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
                raise CheckpointError(f"{path}: cannot read tensor {name} ({exc})") from exc
            if tensor.dtype not in STORAGE_DTYPES.values():  # a source without a header (or one that lied)
                problem = f"has dtype {tensor.dtype}, expected a float type ({ACCEPTED})"
                raise CheckpointError(f"{path}: tensor {name} {problem}")
            target_dtype = dtype or usable_dtype(tensor.dtype)
            for target, part in layout.rules[name].convert(tensor, layout.params):
                set_tensor(model, target, part.to(device=device, dtype=target_dtype).contiguous())
            del tensor
    leftover = [n for n, p in model.state_dict().items() if p.is_meta]
    if leftover:  # cannot happen when the layout covers the model; CheckpointLayout checks that
        raise CheckpointError(f"{path}: parameters left unloaded: {_listing(leftover)}")
    return model.eval()
