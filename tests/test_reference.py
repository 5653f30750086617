"""The reference pipeline: resize rule, packing, batch-1 == batch-2 (CFG), determinism, outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import scene_image

from fe2e_deploy.models.packing import latent_ids, pack, unpack
from fe2e_deploy.reference import FE2EPipeline
from fe2e_deploy.resolution import fe2e_processing_size, parse_resolution


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((640, 480), (1024, 768)),
        ((1024, 768), (1024, 768)),
        ((1242, 375), (1216, 352)),
        ((1280, 960), (1216, 352)),
        ((1920, 1080), (864, 576)),
        ((6048, 4032), (864, 576)),
        ((8000, 6000), (8000, 6000)),
        ((8001, 6007), (8000, 6000)),
    ],
)
def test_fe2e_resize_rule(size, expected):
    assert fe2e_processing_size(*size) == expected


def test_parse_resolution():
    assert parse_resolution("1024x768") == (1024, 768)
    for bad in ("1024", "1000x768", "axb", "0x16"):
        with pytest.raises(ValueError):
            parse_resolution(bad)


def test_pack_layout_matches_the_official_rearrange():
    x = torch.arange(2 * 16 * 4 * 6, dtype=torch.float32).view(2, 16, 4, 6)
    tokens = pack(x)
    assert tokens.shape == (2, 6, 64)
    # "b c (h ph) (w pw) -> b (h w) (c ph pw)": token (h=1, w=2), feature (c=3, ph=1, pw=0)
    assert tokens[0, 1 * 3 + 2, 3 * 4 + 1 * 2 + 0] == x[0, 3, 2 * 1 + 1, 2 * 2 + 0]
    assert torch.equal(unpack(tokens, 4, 6), x)
    ids = latent_ids(4, 6)
    assert ids.shape == (6, 3) and ids[5].tolist() == [0.0, 1.0, 2.0]


def test_batch1_equals_batch2_under_the_empty_prompt(tiny_pipeline):
    ref = torch.randn(1, 16, 6, 8)
    tiny_pipeline.cfg_batch = False
    depth1, normal1 = tiny_pipeline.predict_latents(ref)
    tiny_pipeline.cfg_batch = True
    try:
        depth2, normal2 = tiny_pipeline.predict_latents(ref)
    finally:
        tiny_pipeline.cfg_batch = False
    # identical up to float32 rounding of batched matmuls
    assert torch.allclose(depth1, depth2, rtol=0, atol=1e-5 * depth1.abs().max())
    assert torch.allclose(normal1, normal2, rtol=0, atol=1e-5 * normal1.abs().max())


def test_prediction_shapes_ranges_and_determinism(tiny_pipeline):
    image = scene_image(70, 50)
    a = tiny_pipeline(image, processing_res=(64, 48))
    b = tiny_pipeline(image, processing_res=(64, 48))
    assert a.depth.shape == (50, 70) and a.normals.shape == (50, 70, 3)
    assert a.depth.dtype == np.float32 and 0.0 <= a.depth.min() <= a.depth.max() <= 1.0
    assert np.allclose(np.linalg.norm(a.normals, axis=-1), 1.0, atol=1e-4)
    assert np.array_equal(a.depth, b.depth) and np.array_equal(a.normals, b.normals)
    assert a.depth.std() > 0  # not a constant map


def test_default_processing_uses_the_fe2e_rule(tiny_pipeline):
    x = tiny_pipeline.preprocess(scene_image(64, 48))
    assert x.shape == (1, 3, 768, 1024) and float(x.min()) >= -1.0 and float(x.max()) <= 1.0


def test_bf16_dit_stays_close_to_fp32(tiny_dir, tiny_config):
    files = [tiny_dir / n for n in ("dit.safetensors", "vae.safetensors", "empty_prompt.npz", "lora.safetensors")]
    fp32 = FE2EPipeline.from_files(tiny_config, *files)
    bf16 = FE2EPipeline.from_files(tiny_config, *files, dtype=torch.bfloat16)
    ref = torch.randn(1, 16, 6, 8)
    d32, n32 = fp32.predict_latents(ref)
    d16, n16 = bf16.predict_latents(ref)
    assert d16.dtype == torch.float32
    assert float((d16 - d32).norm() / d32.norm()) < 0.05
    assert float((n16 - n32).norm() / n32.norm()) < 0.05
