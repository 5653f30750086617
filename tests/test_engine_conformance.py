"""One conformance suite, run against every engine kind that runs here, each held to the same behaviours.

Engines: the eager reference (model folder, FP32), the stripped model (FP32, BF16), ONNX Runtime (FP32 at two
resolutions with a static batch, FP32 and BF16 with a dynamic batch, FP8 Q/DQ), AOTInductor (FP32 at two
resolutions with a static batch of 2, BF16 and FP8 at one) and the TensorRT engine's own code behind a stand-in
runtime (``trt_standin.py``: its plan runs the BF16 dynamic-batch export in ONNX Runtime). Behaviours: batches
of 1..N with a ragged last one (the calls the engine makes follow its batch profile), images at each built
resolution, an unbuilt size refused in one line, the precision fixed at build refused otherwise, maps with NaN
refused, ``close()`` then use refused, and every map within the documented tolerance of the stripped FP32 model.

Documented tolerances against the stripped FP32 model (``TOLERANCE``; the tiny random-weight model, whose
errors are larger than a trained model's): depth relative L2 and normals mean angle per precision.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from conftest import LARGE, SMALL, scene_image
from trt_standin import StandInRuntime

import fe2e_deploy.engines.base as base_module
from fe2e_deploy.artifacts.tensorrt import GpuIdentity, PlanSource, TensorRTPlan
from fe2e_deploy.engines import KINDS, EngineClosed, EngineOptions, load_engine
from fe2e_deploy.engines.stripped import StrippedEngine
from fe2e_deploy.engines.tensorrt import TensorRTEngine
from fe2e_deploy.errors import ImageError, InvalidInput
from fe2e_deploy.graph_io import FE2E, BatchProfile

pytestmark = pytest.mark.slow

#: Depth relative L2 and normals mean angle (degrees) against the stripped FP32 model, per precision. Measured
#: (2-core x86 CPU, torch 2.13): FP32 at most 7.4e-7 / 0.006 deg, BF16 2.4e-3 to 3.6e-3 / 0.37 to 0.52 deg, FP8
#: 3.0e-2 to 3.7e-2 / 3.6 to 5.4 deg (the tiny model's random weights; a trained model's errors are smaller).
TOLERANCE = {"fp32": (2e-4, 0.05), "bf16": (0.02, 2.0), "fp8": (0.15, 15.0)}


@dataclass
class Case:
    name: str
    precision: str
    sizes: list[tuple[int, int]] | None  # built processing sizes (None: any multiple of 16)
    profile: BatchProfile | None  # the batches run() takes (None: any)
    open: Callable[..., object]  # open(**EngineOptions fields) -> engine

    def size(self) -> tuple[int, int]:
        return self.sizes[0] if self.sizes else SMALL


def tensorrt_plan(graph, folder, profile: BatchProfile, weight_streaming: bool = False):
    """A "plan" for the stand-in runtime (the graph's path) and its sidecar, as build-trt writes it."""
    plan = folder / f"fe2e{'-streaming' if weight_streaming else ''}.plan"
    plan.write_bytes(str(graph).encode())
    TensorRTPlan(
        fe2e_deploy="test",
        tensorrt="stand-in",
        gpu=GpuIdentity(None, None),
        precision="bf16",
        graph=FE2E.name,
        resolution="32x32",
        batch=profile,
        source=PlanSource(onnx=str(graph), precision="bf16"),
        weight_streaming=weight_streaming,
        builder_optimization_level=3,
        build_seconds=0.0,
    ).write(TensorRTPlan.path_of(plan))
    return plan


@pytest.fixture(scope="module")
def cases(request, tiny_dir, shared_stripped, shared_exports, tmp_path_factory) -> dict[str, Case]:
    def aoti(name: str):
        return request.getfixturevalue(name)  # session fixtures: compiled once, shared with test_aoti

    exports = shared_exports
    plan = tensorrt_plan(
        exports["onnx-bf16-dynamic"] / "fe2e_32x32.onnx", tmp_path_factory.mktemp("plan"), BatchProfile(1, 2, 4)
    )

    def opener(path, **defaults):
        return lambda **options: load_engine(path, **(defaults | options))

    def standin(**options):
        return TensorRTEngine(plan, EngineOptions(**options), runtime=StandInRuntime())

    fixed, dynamic = BatchProfile.fixed, BatchProfile(1, 1, 64)
    listed = [
        Case("eager-fp32", "fp32", None, None, opener(tiny_dir)),
        Case("stripped-fp32", "fp32", None, None, opener(shared_stripped)),
        Case("stripped-bf16", "bf16", None, None, opener(shared_stripped, dtype="bf16")),
        Case("onnx-fp32", "fp32", [SMALL, LARGE], fixed(1), opener(exports["onnx-fp32"])),
        Case("onnx-fp32-dynamic", "fp32", [SMALL], dynamic, opener(exports["onnx-fp32-dynamic"])),
        Case("onnx-bf16-dynamic", "bf16", [SMALL], dynamic, opener(exports["onnx-bf16-dynamic"])),
        Case("onnx-fp8", "fp8", [SMALL], fixed(1), opener(exports["onnx-fp8"])),
        Case("aoti-fp32", "fp32", [LARGE, SMALL], fixed(2), lambda **o: opener(aoti("aoti_fp32"))(**o)),
        Case("aoti-bf16", "bf16", [SMALL], fixed(1), lambda **o: opener(aoti("aoti_bf16"))(**o)),
        Case("aoti-fp8", "fp8", [SMALL], fixed(1), lambda **o: opener(aoti("aoti_fp8"))(**o)),
        Case("tensorrt-standin-bf16", "bf16", [SMALL], BatchProfile(1, 2, 4), standin),
    ]
    return {case.name: case for case in listed}


CASES = [
    "eager-fp32",
    "stripped-fp32",
    "stripped-bf16",
    "onnx-fp32",
    "onnx-fp32-dynamic",
    "onnx-bf16-dynamic",
    "onnx-fp8",
    "aoti-fp32",
    "aoti-bf16",
    "aoti-fp8",
    "tensorrt-standin-bf16",
]


@pytest.fixture(scope="module")
def reference(shared_stripped):
    """The stripped FP32 model: what every engine is compared with."""
    with StrippedEngine(shared_stripped) as engine:
        yield engine


def tiny_rule(width: int, height: int) -> tuple[int, int]:
    """A stand-in for FE2E's resize rule at the tiny model's sizes (the real one gives 1024x768 and up)."""
    return SMALL if width <= 40 else LARGE


def errors(got, want) -> tuple[float, float]:
    depth = float(np.linalg.norm(got.depth - want.depth) / np.linalg.norm(want.depth))
    cosine = np.clip((got.normals * want.normals).sum(-1), -1, 1)
    return depth, float(np.degrees(np.arccos(cosine)).mean())


def record_batches(engine) -> list[int]:
    """Wrap ``engine.run`` to record the batch of every call it gets."""
    calls, run = [], engine.run

    def recording(x, size):
        calls.append(x.shape[0])
        return run(x, size)

    engine.run = recording
    return calls


def expected_calls(profile: BatchProfile | None, count: int, batch_size: int) -> list[int]:
    if profile is None or not profile.is_fixed:
        step = min(batch_size, profile.max) if profile else batch_size
        return [min(step, count - s) for s in range(0, count, step)]
    return [profile.max] * -(-count // profile.max)


@pytest.mark.parametrize("name", CASES)
def test_batches_with_a_ragged_last_one(name, cases, reference):
    """5 images, at most 2 per call: the calls follow the batch profile; every image gets its own maps, in order,
    equal to the same image alone (padding and batching do not mix images)."""
    case = cases[name]
    size = case.size()
    images = [scene_image(*size, seed=10 + i) for i in range(5)]
    with case.open(processing_res=size, batch_size=2) as engine:
        calls = record_batches(engine)
        batched = engine.predict_batch(images)
        calls = list(calls)
        assert calls == expected_calls(case.profile, 5, 2), calls
        alone = [engine.predict(image) for image in images]
    assert len(batched) == 5 and len({p.depth.tobytes() for p in batched}) == 5
    worst = 0.0
    for got, one, image in zip(batched, alone, images, strict=True):
        assert got.depth.shape == (image.height, image.width) and got.normals.shape == (image.height, image.width, 3)
        depth, angle = errors(got, one)
        worst = max(worst, depth)
        assert depth <= TOLERANCE[case.precision][0] / 2 and angle <= TOLERANCE[case.precision][1] / 2
    print(f"{name}: calls {calls}, batched vs alone: worst depth relative L2 {worst:.2e}")


@pytest.mark.parametrize("name", CASES)
def test_each_built_resolution_within_tolerance(name, cases, reference, monkeypatch):
    """Images routed by the resize rule to each built size (any engine: 32x32 and 64x48), in one call, each back
    at its own size and within the documented tolerance of the stripped FP32 model."""
    case = cases[name]
    monkeypatch.setattr(base_module, "fe2e_processing_size", tiny_rule)
    sizes = case.sizes or [SMALL, LARGE]
    shapes = {SMALL: [(30, 30), (36, 20)], LARGE: [(80, 60), (70, 50)]}
    images = [scene_image(*shape, seed=i) for size in sizes for i, shape in enumerate(shapes[size])]
    with case.open() as engine:
        got = engine.predict_batch(images)
    for image, prediction in zip(images, got, strict=True):
        want = reference.predict(image)
        depth, angle = errors(prediction, want)
        print(f"{name} {image.size}: depth relative L2 {depth:.2e}, normals {angle:.3f} deg")
        assert prediction.depth.shape == (image.height, image.width)
        assert depth <= TOLERANCE[case.precision][0] and angle <= TOLERANCE[case.precision][1], (depth, angle)
        assert np.isfinite(prediction.depth).all() and np.allclose(np.linalg.norm(prediction.normals, axis=-1), 1, 1e-4)


@pytest.mark.parametrize("name", CASES)
def test_an_unbuilt_size_is_refused_in_one_line(name, cases, monkeypatch):
    case = cases[name]
    if case.sizes is None:  # any size runs: what is refused is a size over the pixel limit
        with case.open(max_processing_pixels=32 * 32) as engine, pytest.raises(ImageError, match="over") as error:
            engine.predict(scene_image(64, 48))
        assert "\n" not in str(error.value)
        return
    with pytest.raises(InvalidInput, match=r"built for .*asked for 48x48 \(add it with") as error:
        case.open(processing_res=(48, 48))
    assert "\n" not in str(error.value)
    monkeypatch.setattr(base_module, "fe2e_processing_size", lambda w, h: (48, 48))
    with case.open() as engine, pytest.raises(ImageError, match="processed at 48x48 .*built for") as error:
        engine.predict(scene_image(48, 48))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("name", CASES)
def test_the_precision_is_checked(name, cases):
    case = cases[name]
    if case.sizes is None:  # a model or stripped folder runs in fp32 or bf16, nothing else
        with pytest.raises(InvalidInput, match="precision 'fp8' not supported"):
            case.open(dtype="fp8")
        return
    other = "fp32" if case.precision != "fp32" else "bf16"
    with pytest.raises(InvalidInput, match=f"computes in {case.precision} .*--dtype {other} does not apply"):
        case.open(dtype=other)
    case.open(dtype=case.precision).close()  # its own precision is accepted


@pytest.mark.parametrize("name", CASES)
def test_maps_with_nan_are_refused(name, cases):
    case = cases[name]
    size = case.size()
    with case.open(processing_res=size, batch_size=2) as engine:
        run = engine.run

        def broken(x, size):
            depth, normals = run(x, size)
            depth = depth.clone()
            depth[0, 0, 0, 0] = float("nan")  # the first image of every call
            return depth, normals

        engine.run = broken
        images = [scene_image(*size, seed=1), scene_image(*size, seed=2)]
        finishes = engine.predict_prepared([engine.prepare(image) for image in images])
        with pytest.raises(ImageError, match="NaN or Inf"):
            finishes[0]()
        if case.profile is None or case.profile.max >= 2:  # the second image shared the call: it is fine
            assert np.isfinite(finishes[1]().depth).all()
        with pytest.raises(ImageError, match="NaN or Inf"):
            engine.predict(images[0])


@pytest.mark.parametrize("name", CASES)
def test_close_then_use_is_refused(name, cases):
    case = cases[name]
    image = scene_image(*case.size(), seed=3)
    with case.open(processing_res=case.size()) as engine:
        engine.predict(image)
    assert engine.closed and "closed" in repr(engine)
    uses = (engine.predict, engine.prepare, lambda i: engine.predict_prepared([]), lambda i: engine.predict_batch([i]))
    for use in uses:
        with pytest.raises(EngineClosed, match="the engine is closed"):
            use(image)
    engine.close()  # twice is fine


def test_tensorrt_standin_binds_views_of_its_largest_batch(cases, shared_exports, tmp_path):
    """The plan's buffers are allocated once for its largest batch; every call sets the input shape of its batch;
    a weight-streaming plan gets its budget before the execution context exists."""
    runtime = StandInRuntime()
    case = cases["tensorrt-standin-bf16"]
    with case.open(processing_res=SMALL, batch_size=3) as engine:
        assert all(buffer.shape[0] == 4 for buffer in engine.buffers.values())
        engine.predict_batch([scene_image(32, 32, seed=i) for i in range(4)])
        context = engine.context
        assert context.calls == [3, 1] and context.shapes["image"] == (1, 3, 32, 32)
        assert engine.streaming_budget is None
    graph = shared_exports["onnx-bf16-dynamic"] / "fe2e_32x32.onnx"
    plan = tensorrt_plan(graph, tmp_path, BatchProfile(1, 2, 4), weight_streaming=True)
    streaming = StandInRuntime(weight_streaming=True)
    with TensorRTEngine(plan, EngineOptions(weight_streaming_budget="0.25"), runtime=streaming) as engine:
        assert engine.streaming_budget == 250 and streaming.engines[0].weight_streaming_budget_v2 == 250
    with TensorRTEngine(plan, runtime=streaming) as engine:  # default: what fits (a CPU: all of it)
        assert engine.streaming_budget == 1000
    assert streaming.buffers == ["mmap", "mmap"]  # the plan is memory-mapped, never read into a bytes copy
    empty = tmp_path / "empty.plan"
    empty.write_bytes(b"")
    TensorRTPlan.path_of(empty).write_text(TensorRTPlan.path_of(plan).read_text())
    with pytest.raises(InvalidInput, match="the plan is empty"):
        TensorRTEngine(empty, runtime=runtime)
    plan.write_bytes(b"\xff not a plan")
    with pytest.raises(InvalidInput, match="cannot deserialize"):
        TensorRTEngine(plan, runtime=runtime)
    sidecar = json.loads(TensorRTPlan.path_of(plan).read_text()) | {"resolution": "64x48"}
    TensorRTPlan.path_of(plan).write_text(json.dumps(sidecar))
    plan.write_bytes(str(graph).encode())
    with pytest.raises(InvalidInput, match=r"tensor image is an input FLOAT \[-1, 3, 32, 32\].*at 64x48"):
        TensorRTEngine(plan, runtime=runtime)


def test_every_engine_kind_is_covered():
    assert {name.split("-")[0] for name in CASES} == set(KINDS)
