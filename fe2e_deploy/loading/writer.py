"""Streaming safetensors writer: one tensor in memory at a time.

``safetensors.torch.save_file`` needs the whole state dict in memory; the stripped or merged
12 B model does not fit next to its source on a 24 GiB machine. The format is simple (8-byte
little-endian header length, a JSON header of dtype/shape/data offsets, then the raw bytes), so
we write the header from the known names and shapes first and then append each tensor.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

from ..errors import InvalidInput
from ..files.atomic import atomic_path
from .checkpoint import non_finite

DTYPE_CODES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


class SafetensorsWriter:
    """``with SafetensorsWriter(path, specs, metadata) as w: w.write(name, tensor)`` in ``specs`` order.

    The file appears (atomically renamed) only if every declared tensor was written; a tensor holding
    NaN or Inf is refused (nothing is written); with ``overwrite=False`` an existing file (also one
    that another run wrote meanwhile) is never replaced.
    """

    def __init__(
        self,
        path: str | Path,
        specs: dict[str, tuple[torch.dtype, tuple[int, ...]]],
        metadata: dict[str, str] | None = None,
        overwrite: bool = True,
    ):
        self.path, self.specs, self.overwrite = Path(path), dict(specs), overwrite
        self._order = list(self.specs)
        self._next = 0
        header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
        offset = 0
        for name, (dtype, shape) in self.specs.items():
            size = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
            header[name] = {"dtype": DTYPE_CODES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
        raw = json.dumps(header, separators=(",", ":")).encode()
        self._header = raw + b" " * (-len(raw) % 8)

    def __enter__(self) -> SafetensorsWriter:
        self._atomic = atomic_path(self.path, self.overwrite)
        tmp = self._atomic.__enter__()
        self._file = open(tmp, "wb")  # noqa: SIM115  (closed in __exit__)
        self._file.write(struct.pack("<Q", len(self._header)) + self._header)
        return self

    def write(self, name: str, tensor: torch.Tensor) -> None:
        expected = self._order[self._next] if self._next < len(self._order) else None
        if name != expected:
            raise ValueError(f"tensor {name!r} written out of order (expected {expected!r})")
        dtype, shape = self.specs[name]
        if tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
            raise ValueError(f"{name}: got {tensor.dtype} {list(tensor.shape)}, declared {dtype} {list(shape)}")
        problem = non_finite(tensor)
        if problem:  # e.g. a merged weight that overflowed: the file is not written
            raise InvalidInput(f"{name}: contains NaN or Inf ({problem}; an overflow?): {self.path} not written")
        # the tensor's own bytes through the buffer protocol: no extra copy of a (possibly 100 MB) tensor
        self._file.write(memoryview(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()))
        self._next += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        self._file.close()
        if exc_type is None and self._next != len(self._order):
            missing = self._order[self._next :]
            exc = ValueError(f"{self.path}: {len(missing)} declared tensor(s) never written, e.g. {missing[0]}")
            self._atomic.__exit__(ValueError, exc, None)
            raise exc
        self._atomic.__exit__(exc_type, exc, tb)
