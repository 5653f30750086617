"""Shared fixtures: one tiny model in the official formats, its pipeline, small test images."""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fe2e_deploy.config import load_model_config
from fe2e_deploy.reference import FE2EPipeline
from fe2e_deploy.strip import strip_model
from fe2e_deploy.tiny import write_tiny_model

DATA = Path(__file__).parent / "data"


#: Ports tests listen on: outside Linux's ephemeral range (32768-60999, where Ray and every client socket pick
#: theirs) and Ray's worker ports (10002-19999), so a port found free stays free until the server takes it.
TEST_PORTS = range(20000, 30000)


def free_port() -> int:
    """A port on 127.0.0.1 nothing listens on, from :data:`TEST_PORTS` (an ephemeral one could be handed to Ray's
    own servers between this check and the server's start: a test once sent HTTP to Ray's gRPC port)."""
    rng = random.Random(os.getpid())
    for port in rng.sample(TEST_PORTS, 200):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {TEST_PORTS}")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny")
    write_tiny_model(folder, seed=0)
    return folder


@pytest.fixture(scope="session")
def tiny_config(tiny_dir):
    return load_model_config(tiny_dir / "model_config.json")


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_dir, tiny_config) -> FE2EPipeline:
    return FE2EPipeline.from_files(
        tiny_config,
        tiny_dir / "dit.safetensors",
        tiny_dir / "vae.safetensors",
        tiny_dir / "empty_prompt.npz",
        tiny_dir / "lora.safetensors",
    )


def strip_tiny(tiny_dir: Path, config, out: Path, dtype=torch.float32, lora: bool = True, **kwargs) -> Path:
    """``strip`` the tiny model (with its LoRA unless ``lora=False``) into ``out``; returns ``out``."""
    names = ("dit.safetensors", "empty_prompt.npz", "vae.safetensors")
    lora_path = tiny_dir / "lora.safetensors" if lora else None
    strip_model(*(tiny_dir / n for n in names), out, config, lora=lora_path, dtype=dtype, progress=False, **kwargs)
    return out


def model_file_args(tiny_dir: Path, lora: bool = True) -> list[str]:
    """The model file options of a command (--model-config, --dit, --vae, --prompt-embedding[, --lora])."""
    args = ["--model-config", str(tiny_dir / "model_config.json"), "--dit", str(tiny_dir / "dit.safetensors")]
    args += ["--vae", str(tiny_dir / "vae.safetensors"), "--prompt-embedding", str(tiny_dir / "empty_prompt.npz")]
    return [*args, "--lora", str(tiny_dir / "lora.safetensors")] if lora else args


def scene_image(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    """A smooth synthetic RGB scene (gradients + a disc), deterministic."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cx, cy, r = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height, 0.25 * min(width, height)
    disc = ((xx - cx) ** 2 + (yy - cy) ** 2 < r**2).astype(np.float32)
    rgb = np.stack([xx / width, yy / height, 0.5 + 0.4 * disc], axis=-1)
    return Image.fromarray((rgb * 255).clip(0, 255).astype(np.uint8))


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


# -- built engines shared by the AOTInductor tests and the engine conformance suite (compiles are slow) -----

#: The tiny model's sizes in the shared engines (FE2E's resize rule would pick 1024x768 and up).
SMALL, LARGE = (32, 32), (64, 48)


@pytest.fixture(scope="session")
def shared_stripped(tiny_dir, tiny_config, tmp_path_factory) -> Path:
    """The tiny model (with its LoRA) stripped in FP32: the source of every shared built engine."""
    return strip_tiny(tiny_dir, tiny_config, tmp_path_factory.mktemp("shared") / "stripped")


@pytest.fixture(scope="session")
def shared_scales(shared_stripped, tmp_path_factory) -> Path:
    """FP8 scales of the shared stripped model, calibrated on 2 built-in scenes at 32x32."""
    from fe2e_deploy.artifacts.scales import write_scales
    from fe2e_deploy.quantize.calibrate import calibrate_fp8

    scales = calibrate_fp8(shared_stripped, processing_res=SMALL, max_images=2, progress=False)
    return write_scales(scales, tmp_path_factory.mktemp("shared") / "fp8_scales.json")


@pytest.fixture(scope="session")
def shared_exports(shared_stripped, shared_scales, tmp_path_factory) -> dict[str, Path]:
    """ONNX exports of the shared stripped model, one per precision and batch kind (used by the conformance suite
    and the build-trt tests)."""
    from fe2e_deploy.compile.onnx_export import export_onnx

    root = tmp_path_factory.mktemp("exports")
    specs = {
        "onnx-fp32": {"resolutions": (SMALL, LARGE)},
        "onnx-fp32-dynamic": {"resolutions": (SMALL,), "dynamic_batch": True},
        "onnx-bf16": {"resolutions": (SMALL,), "dtype": "bf16", "graphs": ("fe2e", "dit")},
        "onnx-bf16-dynamic": {"resolutions": (SMALL,), "dynamic_batch": True, "dtype": "bf16"},
        "onnx-fp8": {"resolutions": (SMALL,), "precision": "fp8", "fp8_scales": shared_scales},
    }
    for name, spec in specs.items():
        export_onnx(shared_stripped, root / name, **({"graphs": ("fe2e",), "progress": False} | spec))
    return {name: root / name for name in specs}


def _aoti(stripped: Path, tmp_path_factory, name: str, **kwargs) -> Path:
    from fe2e_deploy.compile.aoti_build import build_aoti

    out = tmp_path_factory.mktemp("shared") / name
    build_aoti(stripped, out, device="cpu", **kwargs)
    return out


@pytest.fixture(scope="session")
def aoti_fp32(shared_stripped, tmp_path_factory) -> Path:
    """An AOTInductor engine folder: FP32, static batch 2, two resolutions (64x48, 32x32): two compiles."""
    return _aoti(shared_stripped, tmp_path_factory, "aoti_fp32", resolutions=[LARGE, SMALL], precision="fp32", batch=2)


@pytest.fixture(scope="session")
def aoti_bf16(shared_stripped, tmp_path_factory) -> Path:
    """BF16, batch 1, one resolution (32x32)."""
    return _aoti(shared_stripped, tmp_path_factory, "aoti_bf16", resolutions=[SMALL], precision="bf16")


@pytest.fixture(scope="session")
def aoti_fp8(shared_stripped, shared_scales, tmp_path_factory) -> Path:
    """FP8 (per-tensor scales, BF16 compute), batch 1, one resolution (32x32), compiled with the real FP8 GEMM
    calls (``torch._scaled_mm``, which the CPU runs too)."""
    options = {"resolutions": [SMALL], "precision": "fp8", "scales": shared_scales, "fp8_gemm": "scaled_mm"}
    return _aoti(shared_stripped, tmp_path_factory, "aoti_fp8", **options)
