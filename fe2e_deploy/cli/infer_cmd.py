"""``fe2e-deploy infer``."""

from __future__ import annotations

from pathlib import Path

import typer

from ..engines import load_engine
from ..engines.eager import EagerEngine
from ..infer import run_infer
from ..model_files import ModelFiles
from ..processing import parse_resolution
from .app import app, fail, user_errors


@app.command("infer")
def infer(
    images_dir: Path = typer.Argument(..., help="Folder of .jpg/.jpeg/.png images, searched recursively."),
    output_dir: Path = typer.Option(..., "--output-dir", "-o", help="Output folder (sub-folders mirror the input)."),
    engine: Path = typer.Option(
        None,
        help="Engine to run: a model folder (official files, as init-tiny writes). "
        "Exclusive with the model file options.",
    ),
    model_config: str = typer.Option(
        None, help="Model config: a preset (step1x-edit, tiny) or a model_config.json with official names."
    ),
    dit: Path = typer.Option(None, help="Official DiT checkpoint (.safetensors, connector included)."),
    vae: Path = typer.Option(None, help="Official FLUX VAE checkpoint (.safetensors)."),
    prompt_embedding: Path = typer.Option(None, help="Empty-prompt embedding (.npz with 'embeds' and 'masks')."),
    lora: Path = typer.Option(None, help="FE2E LoRA in the kohya format, applied unmerged (peft)."),
    dtype: str = typer.Option("fp32", help="DiT precision: fp32 or bf16 (the VAE always runs in FP32)."),
    device: str = typer.Option("cpu", help="Torch device, e.g. cpu or cuda."),
    processing_res: str = typer.Option(
        None, help="Process at WIDTHxHEIGHT (multiples of 16) instead of FE2E's resize rule."
    ),
    cfg_batch: bool = typer.Option(
        False, "--cfg-batch", help="Run the official batch of 2 (cond + uncond, both empty prompts) instead of 1."
    ),
    batch_size: int = typer.Option(
        1,
        help="Images per engine call (batched by stripped folders and dynamic-batch ONNX exports).",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs instead of skipping them."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Predict depth and surface normals for every image in IMAGES_DIR.

    With no model options, runs the embedded demo: the tiny config with seeded random weights.
    Writes depth_npy/, depth_png16/ (16-bit), depth_colored/, normals_npy/ and normals_png/ at
    each input's resolution. Unreadable images are reported and skipped (exit code 1 at the end).
    """
    with user_errors():
        res = parse_resolution(processing_res) if processing_res else None
        if engine is not None:
            if any(v is not None for v in (model_config, dit, vae, prompt_embedding, lora)):
                raise ValueError(
                    "--engine cannot be combined with --model-config/--dit/--vae/--prompt-embedding/--lora"
                )
            runner = load_engine(engine, device=device, dtype=dtype, processing_res=res)
        else:
            files = ModelFiles.resolve(model_config, dit, vae, prompt_embedding, lora)
            runner = EagerEngine.from_model_files(files, dtype, device, res, cfg_batch)
        report = run_infer(
            runner, images_dir, output_dir, overwrite=overwrite, progress=progress, batch_size=batch_size
        )
    for path, reason in report.skipped:
        typer.echo(f"skipped {path}: {reason}")
    for path, reason in report.failed:
        typer.secho(f"failed {path}: {reason}", err=True, fg=typer.colors.RED)
    typer.echo(report.summary())
    if report.failed:
        raise fail(f"{len(report.failed)} image(s) failed (see above)", code=1)
