"""The one gate every model load passes through, so "inputs are checked before anything loads" can be tested.

Every command checks its inputs and outputs (files, options, devices) before it loads a model: a bad
input costs nothing and leaves nothing behind. Each primitive that loads a model or its weights calls
:func:`opening` first: safetensors files (``loading/checkpoint.py``), the empty-prompt embedding, ONNX
Runtime sessions, AOTInductor packages, TensorRT plans, training checkpoints, and the generators of
random weights (``tiny.py``, ``synthetic.py``). Under ``with closed():`` any of them raises
:class:`LoadBeforeChecks`, which is how the tests run every command with bad inputs and see that it
refused them first. ``tests/test_architecture.py`` checks the other half structurally: every function
of the package that calls one of these libraries' load functions calls :func:`opening` too, so a new
loader cannot slip past the gate.

Pure Python and free when open (one integer compare per load).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_closed = 0  # nesting depth of ``closed()``; a global (not a context variable): loads may happen in threads


class LoadBeforeChecks(AssertionError):
    """A model was loaded while the gate was closed: a command loaded before refusing its bad input."""


def opening(what: str, path: object = None) -> None:
    """Called by every model load before it starts; raises while the gate is closed."""
    if _closed:
        where = f" ({path})" if path is not None else ""
        raise LoadBeforeChecks(f"{what}{where} would be loaded while the load gate is closed")


@contextlib.contextmanager
def closed() -> Iterator[None]:
    """Refuse every model load inside the block (tests: a command must reject bad inputs before loading)."""
    global _closed
    with _lock:
        _closed += 1
    try:
        yield
    finally:
        with _lock:
            _closed -= 1
