"""The ``fe2e-deploy`` command line: one thin Typer command per stage, each in its own module.

Every command parses options and calls one library function; errors the user can fix
(missing or corrupt files, bad shapes, bad options) are printed as one clear message, exit 2.
"""

from __future__ import annotations

from .app import app, main

# Each module registers its commands on ``app``.
from . import (  # noqa: E402,F401  isort: skip
    batch_cmd,
    benchmark_cmd,
    build_cmd,
    build_trt_cmd,
    calibrate_cmd,
    demo_cmd,
    evaluate_cmd,
    export_cmd,
    infer_cmd,
    init_tiny_cmd,
    merge_lora_cmd,
    quickstart_cmd,
    serve_cmd,
    strip_cmd,
    train_lora_cmd,
)

__all__ = ["app", "main"]
