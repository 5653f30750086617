"""``fe2e-deploy benchmark``."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import InvalidInput, MissingInput, NotAFolder
from ..resolution import parse_resolution
from . import options
from .app import app, user_errors, writing
from .options import DEVICE_CHOICE, ENGINE_HELP, SEED_RANGE, Dtype, WeightStreamingBudget, number


@app.command("benchmark")
def benchmark(
    engine: list[Path] = typer.Option(None, help="Engine to time, repeatable. " + ENGINE_HELP),
    reference: Path = typer.Option(
        None,
        help="Model folder (official files) to time the official path on (BF16 DiT, CFG batch 2) and as "
        "the FP32 accuracy reference. Default: none (no speedup vs reference).",
    ),
    synthetic_weights: str = typer.Option(
        None,
        "--synthetic-weights",
        help="Benchmark without weight files: build PRESET (step1x-edit = the 12 B model, tiny, or a "
        "model_config.json) from seeded random weights directly on the device, strip it in memory and time "
        "the engines of --engines. --json then writes one JSON line per engine as soon as it is measured.",
    ),
    engines: str = typer.Option(
        "stripped-bf16,reference,compiled-bf16,fp8-row,fp8-tensor,fp8-row-fastacc,attention",
        help="With --synthetic-weights: comma-separated engines, run in this order at each resolution "
        "(stripped-bf16 first: every map error is measured against it).",
    ),
    fp8_gemm: str = typer.Option(
        "auto",
        help="With --synthetic-weights: the FP8 engines' GEMM: auto (torch._scaled_mm on CUDA GPUs with compute "
        "capability >= 8.9, the dequantised product elsewhere), scaled_mm (the FP8 GEMM calls on any device, the "
        "CPU too: how the GPU's calls are tested here) or dequantized; or ENGINE=MODE pairs, e.g. "
        "fp8-row=scaled_mm,fp8-tensor=dequantized (engines not named: auto).",
    ),
    resolution: list[str] = typer.Option(
        ["1024x768"],
        help="Processing resolution WIDTHxHEIGHT; repeatable with --synthetic-weights (e.g. 1024x768, 1216x352, "
        "864x576), one otherwise.",
    ),
    image: Path = typer.Option(
        None, help="Image to run on (a file, or a folder's first image); default: a synthetic scene."
    ),
    host_images: Path = typer.Option(
        None,
        help="Also run each engine file through infer over this folder of real-size images (all outputs, to a "
        "temporary folder): end to end per image with decoding and writing, not only the engine.",
    ),
    runs: int = typer.Option(10, **number(1, 100_000), help="Timed runs per engine."),
    warmup: int = typer.Option(
        2, **number(0, 10_000), help="Untimed warm-up runs per engine (compilation, CUDA graph capture)."
    ),
    device: str = typer.Option("auto", **DEVICE_CHOICE, help="auto (cuda if a GPU is visible, else cpu), cpu or cuda."),
    dtype: Dtype = None,
    weight_streaming_budget: WeightStreamingBudget = None,
    seed: int = typer.Option(
        0, **SEED_RANGE, help="With --synthetic-weights: seed of the random weights and the scene."
    ),
    compile_mode: str = typer.Option(
        None, help="With --synthetic-weights: torch.compile mode of the compiled engines (default: its default)."
    ),
    time_budget: float = typer.Option(
        None,
        **number(1.0, 1e7),
        help="With --synthetic-weights: seconds for the whole run; engines that would not fit are skipped.",
    ),
    profile: bool = typer.Option(
        False, "--profile", help="With --synthetic-weights: record each engine's 15 most expensive kernels."
    ),
    accuracy: bool = typer.Option(True, "--accuracy/--no-accuracy", help="Compare maps with the FP32 reference."),
    json_out: Path = typer.Option(
        None, "--json", help="Write the report (JSON; JSON lines with --synthetic-weights) here."
    ),
    plot: Path = typer.Option(None, help="Write a PNG bar chart of the stage times here."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing --json/--plot files."),
) -> None:
    """Time engines per stage and end to end, next to the official reference path, in one run.

    With engine files: prints a table (median stage times, end-to-end median/p90/min, images/s,
    speedup over the reference and over the paper's 1.78 s, map error vs FP32) and writes JSON and
    a plot on request. With --synthetic-weights: no files at all; the model is built on the device
    and each engine gets a line with its time, DiT TFLOP/s and fraction of the BF16 peak, peak
    device memory and map error vs the stripped BF16 model.
    """
    with user_errors():  # options, outputs, engines and the image are checked before anything is loaded
        for out in (json_out, plot):
            options.output_file(out, overwrite)
        resolutions = tuple(parse_resolution(r) for r in resolution)
        if synthetic_weights is not None:
            if engine or reference is not None or image is not None:
                raise InvalidInput("--synthetic-weights builds its own engines: drop --engine/--reference/--image")
            _synthetic(
                synthetic_weights,
                engines,
                resolutions,
                runs,
                warmup,
                options.device(device),
                seed,
                compile_mode,
                time_budget,
                profile,
                fp8_gemm,
                json_out,
                plot,
            )
            return
        if len(resolutions) != 1:
            raise InvalidInput("several --resolution values need --synthetic-weights; engine files run at one")
        if host_images is not None and not host_images.is_dir():
            raise NotAFolder(f"{host_images}: --host-images must be a folder of images")
        settings = options.engine_options(device, dtype, resolution[0], weight_streaming_budget=weight_streaming_budget)
        _files(engine, reference, settings, image, runs, warmup, accuracy, json_out, plot, host_images)


def _files(engine, reference, settings, image, runs, warmup, accuracy, json_out, plot, host_images) -> None:
    from ..benchmark import format_table, run_benchmark, write_plot, write_report  # noqa: PLC0415
    from ..engines import engine_kind  # noqa: PLC0415
    from ..files.images import find_images, open_image  # noqa: PLC0415
    from ..model_files import ModelFiles  # noqa: PLC0415
    from ..scenes import synthetic_scene  # noqa: PLC0415

    if not engine and reference is None:
        raise InvalidInput("nothing to benchmark: pass --engine and/or --reference (or --synthetic-weights PRESET)")
    for path in engine or []:
        engine_kind(path)
    files = ModelFiles.from_dir(reference) if reference is not None else None
    if image is None:
        picture = synthetic_scene(*settings.processing_res)
    else:
        paths = find_images(image) if image.is_dir() else [image]
        if not paths:
            raise MissingInput(f"{image}: no .jpg/.jpeg/.png images found")
        if not paths[0].is_file():
            raise MissingInput(f"{paths[0]}: image not found")
        picture = open_image(paths[0])
    report = run_benchmark(
        list(engine or []),
        picture,
        files,
        settings,
        runs,
        warmup,
        accuracy,
        typer.echo,
        host_images=host_images,
    )
    typer.echo(format_table(report))
    if json_out is not None:
        with writing(json_out):
            write_report(report, json_out)
        typer.echo(f"report written to {json_out}")
    if plot is not None:
        with writing(plot):
            write_plot(report, plot)
        typer.echo(f"plot written to {plot}")


def _synthetic(
    preset, engines, resolutions, runs, warmup, device, seed, compile_mode, time_budget, profile, fp8_gemm, json_out,
    plot,
) -> None:  # fmt: skip
    from ..synthetic_benchmark import (  # noqa: PLC0415
        SyntheticSettings,
        format_records,
        run_synthetic_benchmark,
        write_records_plot,
    )

    settings = SyntheticSettings(
        preset=preset,
        device=device,
        resolutions=resolutions,
        engines=tuple(e.strip() for e in engines.split(",") if e.strip()),
        runs=runs,
        warmup=warmup,
        seed=seed,
        compile_mode=compile_mode,
        time_budget=time_budget,
        profile=profile,
        fp8_gemm=fp8_gemm,
    )
    records = run_synthetic_benchmark(settings, json_out, log=typer.echo)
    typer.echo(format_records(records))
    if json_out is not None:
        typer.echo(f"{len(records)} JSON line(s) written to {json_out}")
    if plot is not None and any("e2e_median_s" in r for r in records):
        with writing(plot):
            write_records_plot(records, plot)
        typer.echo(f"plot written to {plot}")
    failed = [f"{r['engine']} @ {r['resolution']}" for r in records if "failed" in r]
    if failed:
        typer.echo(f"{len(failed)} engine(s) failed (their lines say why; the others ran): {failed}", err=True)
        raise typer.Exit(1)
