"""Storage dtypes of official checkpoints: which ones the loaders, ``merge-lora`` and ``strip`` take.

The official release also ships the DiT stored in FP8 (``step1x-edit-i1258-FP8.safetensors``: the BF16
file's tensors cast to float8_e4m3fn, no scales). FP8 is storage only here: every E4M3 (and E5M2)
value is a BF16 value, so a tensor is upcast exactly to the compute dtype when it is read; the only
loss is the FP8 rounding already in the file.
"""

from __future__ import annotations

import torch

#: safetensors dtype code -> torch dtype, for every dtype an official checkpoint tensor may be stored in.
STORAGE_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
FP8_DTYPES = frozenset({torch.float8_e4m3fn, torch.float8_e5m2})
#: What an FP8-stored tensor becomes when it is computed with or written out (exact: E4M3/E5M2 ⊂ BF16).
FP8_UPCAST = torch.bfloat16
ACCEPTED = "F32, F16, BF16, F64, F8_E4M3 or F8_E5M2"
_CODES = {dtype: code for code, dtype in STORAGE_DTYPES.items()}
#: Other safetensors codes, shown in errors with torch's name too (``I32`` -> ``torch.int32 (I32)``).
_OTHER_CODES = {
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "C64": torch.complex64,
    "F8_E8M0": torch.float8_e8m0fnu,
}


def code_of(dtype: torch.dtype) -> str:
    """The safetensors code of a storage dtype (``torch.float8_e4m3fn`` -> ``F8_E4M3``), else ``str(dtype)``."""
    return _CODES.get(dtype, str(dtype))


def unsupported(code: str) -> str | None:
    """None if ``code`` (a safetensors dtype code) is a storage dtype we take, else why not (one line)."""
    if code in STORAGE_DTYPES:
        return None
    shown = f"{_OTHER_CODES[code]} ({code})" if code in _OTHER_CODES else code
    return f"has dtype {shown}, expected a float type ({ACCEPTED})"


def usable_dtype(stored: torch.dtype) -> torch.dtype:
    """The dtype a stored tensor is computed with or written out in when no other is asked: FP8 -> BF16."""
    return FP8_UPCAST if stored in FP8_DTYPES else stored
