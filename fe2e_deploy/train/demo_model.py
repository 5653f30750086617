"""Train the embedded demo model: a small FE2E on the project's ray-cast scenes, on a CPU.

Three stages, FE2E's recipe at a small scale, each leaving a model folder in the official formats
(``model_config.json``, ``dit.safetensors``, ``vae.safetensors``, ``empty_prompt.npz``, ``lora.safetensors``)
that the same loaders as the 12 B model read:

0. ``init-tiny`` weights for :data:`DEMO_CONFIG` (seeded random, official formats; the empty-prompt
   embedding stays the random one: there is no text encoder here);
1. the VAE as an autoencoder of images, log-normalised depth maps and normal maps
   (``autoencoder.py``), on random crops and then on whole maps; its latent mean and spread become
   the config's ``shift_factor`` / ``scale_factor``;
2. the whole DiT (connector included) with FE2E's consistent-velocity objective (``objective.py``) on
   the frozen VAE's latents;
3. a LoRA on the frozen stage-2 DiT with ``train-lora`` (the same objective), as FE2E adapts Step1X-Edit.

Training scenes come from the recipe's ``generator``: ``randomised``
(:func:`fe2e_deploy.randomised_scenes.randomised_sample`, domain-randomised: many primitive kinds,
textures, materials, lights, camera effects and cameras), ``v1`` (:func:`fe2e_deploy.scenes.random_sample`,
the first demo model's generator) or ``mixed`` (3 seeds in 4 randomised, the 4th v1; the default since
issue 24), with seeds
``0 .. scenes-1``; the held-out evaluation sets start at :data:`EVAL_FIRST_SEED`. The second renderer
(:mod:`fe2e_deploy.evaluation.heldout_renderer`) is for evaluation only and never trains. Every stage
has a step count and a time budget (the steps actually run are recorded in ``training.json``). A stage
whose folder exists in the work folder is reused, so a run that was cut off continues from its last
finished stage; the work folder's ``training.json`` names the recipe, and a rerun under another one
(other than ``threads`` / ``checkpoint_every``) is refused.

    python -m fe2e_deploy.train.demo_model train --out build/demo_train/model --work build/demo_train
    python -m fe2e_deploy.train.demo_model scenes --out build/demo_eval --first-seed 1000000 --count 60
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from ..config import ConnectorConfig, DiTConfig, ModelConfig, VAEConfig, load_model_config
from ..errors import InvalidInput, OutputExists
from ..evaluation.datasets import open_dataset
from ..evaluation.metrics import angular_error, evaluate_depth, normalize
from ..files.atomic import staged_folder, write_json
from ..load_gate import opening
from ..loading import load_dit, load_vae
from ..loading.dit_layout import dit_layout
from ..loading.layout import CheckpointLayout
from ..loading.vae_layout import vae_layout
from ..model_files import DEMO_RESOLUTION, ModelFiles
from ..precision import DTYPE_PRECISIONS, parse_precision, torch_dtype
from ..processing import preprocess
from ..randomised_scenes import randomised_sample
from ..reference import FE2EPipeline
from ..resolution import parse_resolution
from ..scenes import SceneSample, random_sample
from ..tiny import FILES, write_tiny_model
from .autoencoder import latent_statistics, train_autoencoder
from .data import log_normalise_depth, write_sample
from .loop import TrainOptions, train_lora
from .objective import velocity_loss, velocity_targets
from .schedule import optimise

DEMO_CONFIG = ModelConfig(
    dit=DiTConfig(
        context_in_dim=64, hidden_size=128, num_heads=4, depth=3, depth_single_blocks=3, axes_dim=(8, 12, 12)
    ),
    connector=ConnectorConfig(in_channels=48, hidden_size=64, heads_num=2, depth=2),
    vae=VAEConfig(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1),
)
EVAL_FIRST_SEED = 1_000_000
MIXED_V1_EVERY = 4


def mixed_sample(seed: int, width: int, height: int) -> SceneSample:
    """Every :data:`MIXED_V1_EVERY`-th seed a scene of the first generator, the others domain-randomised
    (training on both keeps the first generator's scores while the randomised scenes widen the domain)."""
    if seed % MIXED_V1_EVERY == MIXED_V1_EVERY - 1:
        return random_sample(seed, width, height)
    return randomised_sample(seed, width, height)


#: The training scene generators by name (the recipe's ``generator``); never the held-out renderer.
GENERATORS = {"v1": random_sample, "randomised": randomised_sample, "mixed": mixed_sample}


@dataclass
class Recipe:
    resolution: tuple[int, int] = DEMO_RESOLUTION
    generator: str = "mixed"  # a key of GENERATORS: "mixed" (3 in 4 randomised), "randomised", "v1" (the first)
    scenes: int = 3000
    seed: int = 0
    threads: int = 2  # both cores of a quiet machine; use 1 where other jobs share the cores (OpenMP stalls)
    vae_steps: int = 1500  # phase 1: random crops (cheap per step; the VAE is convolutional)
    vae_batch: int = 12  # scenes per step; each gives 3 images (RGB, depth, normals)
    vae_crop: int = 32  # square crops, pixels (a multiple of 8)
    vae_lr: float = 1e-3
    vae_budget_s: float = 300.0
    vae_rgb_weight: float = 0.1  # RGB latents are only encoded by the pipeline, never decoded
    vae_full_steps: int = 500  # phase 2: whole maps at the training resolution (see _stage_vae)
    vae_full_batch: int = 4
    vae_full_lr: float = 3e-4
    vae_full_budget_s: float = 300.0
    dit_hidden: int = 128  # DiT width (DEMO_CONFIG's); heads = dit_hidden // 32 (RoPE axes 8 + 12 + 12 per head)
    dit_dtype: str = "fp32"  # dtype of dit.safetensors: fp32, or bf16 (the official checkpoints' dtype: half the file)
    dit_steps: int = 12000  # an upper bound: on the 2-core VM the time budget binds (0.23 s per step, quiet)
    dit_batch: int = 16
    dit_lr: float = 7e-4
    dit_budget_s: float = 1740.0  # the cosine ends at zero whichever binds (schedule.py)
    lora_steps: int = 60
    lora_scenes: int = 64
    lora_rank: int = 8
    lora_lr: float = 2e-4
    checkpoint_every: int = 500


def log(record: dict) -> None:
    print(json.dumps(record), flush=True)


def _render_one(job: tuple[str, int, int, int]) -> SceneSample:
    generator, seed, width, height = job
    return GENERATORS[generator](seed, width, height)


def render_set(
    first_seed: int, count: int, resolution: tuple[int, int], generator: str = "v1", processes: int = 1
) -> list[SceneSample]:
    """Scenes ``first_seed .. first_seed + count - 1`` of ``generator``; each is a pure function of its seed,
    so ``processes`` > 1 (worker processes, in order) gives the same list."""
    if generator not in GENERATORS:
        raise ValueError(f"unknown scene generator {generator!r}; one of {sorted(GENERATORS)}")
    jobs = [(generator, first_seed + i, *resolution) for i in range(count)]
    if processes <= 1 or count < 64:
        return [_render_one(job) for job in jobs]
    import multiprocessing  # noqa: PLC0415
    from concurrent.futures import ProcessPoolExecutor  # noqa: PLC0415

    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_render_one, jobs, chunksize=32))


def scene_tensors(samples: list[SceneSample], resolution: tuple[int, int]) -> dict[str, torch.Tensor]:
    """FE2E's training inputs: RGB in [-1, 1], log-normalised depth (3 channels), normals, valid pixels."""
    rgb, depth, normals, valid = [], [], [], []
    for s in samples:
        ok = s.depth > 0
        rgb.append(preprocess(s.rgb, resolution)[0])
        y = log_normalise_depth(s.depth, ok)
        depth.append(torch.from_numpy(y).float()[None].expand(3, -1, -1))
        normals.append(torch.from_numpy(np.where(ok[..., None], s.normals, 0.0).astype(np.float32)).permute(2, 0, 1))
        valid.append(torch.from_numpy(ok))
    return {k: torch.stack(v) for k, v in (("rgb", rgb), ("depth", depth), ("normals", normals), ("valid", valid))}


def official_state(layout: CheckpointLayout, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's weights under the official checkpoint names (the inverse of the loader's rules)."""
    state = module.state_dict()
    return {
        name: rule.join([state[t] for t in rule.targets]).detach().float().contiguous()
        for name, rule in layout.rules.items()
    }


def demo_config(recipe: Recipe) -> ModelConfig:
    """:data:`DEMO_CONFIG` with the recipe's DiT width (32 channels per attention head)."""
    if recipe.dit_hidden % 32:
        raise ValueError(f"dit_hidden must be a multiple of 32 (the RoPE axes per head), got {recipe.dit_hidden}")
    dit = replace(DEMO_CONFIG.dit, hidden_size=recipe.dit_hidden, num_heads=recipe.dit_hidden // 32)
    return replace(DEMO_CONFIG, dit=dit)


def save_model_folder(
    folder: Path, config: ModelConfig, dit, vae, prompt: Path, lora: Path | None = None, dit_dtype: str = "fp32"
) -> None:
    """A complete model folder, built in a hidden sibling and swapped in whole (replacing an older one); the
    DiT's weights in ``dit_dtype`` (the VAE stays FP32)."""
    meta = {"format": "pt", "fe2e_deploy": "train-demo-model"}
    with staged_folder(folder, overwrite=True, marker=FILES["config"], what="a model") as tmp:
        write_json(tmp / FILES["config"], config.to_dict())
        dit_state = {k: v.to(torch_dtype(dit_dtype)) for k, v in official_state(dit_layout(config), dit).items()}
        save_file(dit_state, str(tmp / FILES["dit"]), metadata=meta)
        save_file(official_state(vae_layout(config.vae), vae), str(tmp / FILES["vae"]), metadata=meta)
        shutil.copyfile(prompt, tmp / FILES["prompt"])
        for path in (tmp / FILES["dit"], tmp / FILES["vae"]):
            path.chmod(0o644)  # safetensors' save_file leaves 0o600
        if lora is not None:
            shutil.copyfile(lora, tmp / FILES["lora"])


def _stage_vae(recipe: Recipe, data: dict[str, torch.Tensor], init: Path, out: Path, report: dict) -> None:
    config = load_model_config(init / FILES["config"])
    vae = load_vae(config, init / FILES["vae"], progress=False)
    dit = load_dit(config, init / FILES["dit"], torch.float32, progress=False)
    gen = torch.Generator().manual_seed(recipe.seed + 1)
    width, height = recipe.resolution

    def batches(scenes: int, crop: tuple[int, int]):
        """``scenes`` random scenes' RGB, depth and normal maps, cut to one random ``crop`` (w, h) per step."""
        weights = torch.tensor([recipe.vae_rgb_weight] * scenes + [1.0] * 2 * scenes)

        def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
            idx = torch.randint(0, len(data["rgb"]), (scenes,), generator=gen)
            x0 = 8 * int(torch.randint(0, (width - crop[0]) // 8 + 1, (1,), generator=gen))
            y0 = 8 * int(torch.randint(0, (height - crop[1]) // 8 + 1, (1,), generator=gen))
            maps = torch.cat([data["rgb"][idx], data["depth"][idx], data["normals"][idx]])
            return maps[:, :, y0 : y0 + crop[1], x0 : x0 + crop[0]], weights

        return batch

    # Crops are cheap (a 32x32 crop costs 1/12 of a whole map), but a VAE trained on crops alone
    # reconstructs whole maps badly (measured: normals 32x32 L1 0.06, whole 128x96 maps 0.21; its
    # GroupNorm statistics and mid-block attention saw 4x4 latents only): phase 2 trains on whole maps.
    start = time.perf_counter()
    crop = (min(recipe.vae_crop, width), min(recipe.vae_crop, height))
    steps = train_autoencoder(
        vae, batches(recipe.vae_batch, crop), recipe.vae_steps, recipe.vae_lr, recipe.vae_budget_s, log
    )
    full_steps = train_autoencoder(
        vae,
        batches(recipe.vae_full_batch, (width, height)),
        recipe.vae_full_steps,
        recipe.vae_full_lr,
        recipe.vae_full_budget_s,
        log,
        stage="vae_full",
    )
    every = torch.cat([data["rgb"][:256], data["depth"][:256], data["normals"][:256]])
    shift, scale = latent_statistics(vae, every)
    config = replace(config, vae=replace(config.vae, shift_factor=shift, scale_factor=scale))
    save_model_folder(out, config, dit, vae, init / FILES["prompt"], dit_dtype=recipe.dit_dtype)
    seconds = round(time.perf_counter() - start, 1)
    report["vae"] = {"crop_steps": steps, "full_steps": full_steps, "seconds": seconds, "shift": shift, "scale": scale}


def _stage_dit(recipe: Recipe, data: dict[str, torch.Tensor], stage1: Path, out: Path, report: dict) -> None:
    files = ModelFiles.from_dir(stage1, lora=False)
    pipe = FE2EPipeline.from_files(files.config, files.dit, files.vae, files.prompt)
    start = time.perf_counter()
    parts = [
        velocity_targets(pipe, *(data[k][i : i + 64] for k in ("rgb", "depth", "normals", "valid")))
        for i in range(0, len(data["rgb"]), 64)
    ]
    ref, target, weight = (torch.cat([p[k] for p in parts]) for k in range(3))
    log({"stage": "dit", "targets": len(ref), "seconds": round(time.perf_counter() - start, 1)})
    dit = pipe.dit
    gen = torch.Generator().manual_seed(recipe.seed + 2)
    checkpoint = out.with_name(out.name + "-checkpoint")

    def loss_at(step: int) -> torch.Tensor:
        idx = torch.randint(0, len(ref), (recipe.dit_batch,), generator=gen)
        return velocity_loss(pipe, ref[idx], target[idx], weight[idx])

    def save_checkpoint(done: int) -> None:
        if done % recipe.checkpoint_every == 0:
            save_model_folder(checkpoint, files.config, dit, pipe.vae, files.prompt, dit_dtype=recipe.dit_dtype)

    losses = optimise(
        dit,
        loss_at,
        recipe.dit_steps,
        recipe.dit_lr,
        warmup=max(1, recipe.dit_steps // 50),
        time_budget=recipe.dit_budget_s,
        log=log,
        stage="dit",
        log_every=50,
        after_step=save_checkpoint,
    )
    save_model_folder(out, files.config, dit, pipe.vae, files.prompt, dit_dtype=recipe.dit_dtype)
    shutil.rmtree(checkpoint, ignore_errors=True)
    report["dit"] = {
        "steps": len(losses),
        "seconds": round(time.perf_counter() - start, 1),
        "loss_first_50": float(np.mean(losses[:50])),
        "loss_last_50": float(np.mean(losses[-50:])),
    }


def _stage_lora(recipe: Recipe, stage2: Path, work: Path, report: dict) -> Path:
    data_dir, lora_dir = work / "lora_data", work / "lora"
    if not (data_dir / "rgb").is_dir():
        for i, s in enumerate(render_set(0, recipe.lora_scenes, recipe.resolution, recipe.generator)):
            write_sample(data_dir, f"scene_{i:05d}", s.rgb, s.depth, s.normals)
    opts = TrainOptions(
        rank=recipe.lora_rank,
        alpha=float(recipe.lora_rank),
        lr=recipe.lora_lr,
        steps=recipe.lora_steps,
        batch_size=recipe.dit_batch,
        seed=recipe.seed,
        resolution=recipe.resolution,
        kohya=True,
        cache_latents=True,
    )
    start = time.perf_counter()
    result = train_lora(
        ModelFiles.from_dir(stage2, lora=False), data_dir, lora_dir, opts, overwrite=True, progress=False
    )
    report["lora"] = {
        "steps": len(result.losses),
        "seconds": round(time.perf_counter() - start, 1),
        "loss_first": result.losses[0],
        "loss_last_10": float(np.mean(result.losses[-10:])),
        "rank": recipe.lora_rank,
    }
    return lora_dir / "lora.safetensors"


#: Recipe fields that change how fast a run goes, not what its stages produce: a rerun may change them.
SPEED_ONLY_FIELDS = ("threads", "checkpoint_every")


def check_same_recipe(previous: dict | None, recipe: Recipe, work: Path) -> None:
    """Refuse to reuse ``work``'s finished stages (scenes, VAE, DiT) under a recipe that would not have made them."""
    if previous is None:
        return
    current, defaults = (json.loads(json.dumps(asdict(r))) for r in (recipe, Recipe()))  # tuples as JSON lists
    # a field newer than the work folder ran with its default (what the older code did)
    before = {name: previous.get(name, defaults[name]) for name in current}
    changed = [
        f"{name} {before[name]!r} -> {value!r}"
        for name, value in current.items()
        if name not in SPEED_ONLY_FIELDS and before[name] != value
    ]
    if changed:
        raise InvalidInput(
            f"{work} holds the stages of another recipe ({'; '.join(changed)}): "
            "use a new --work folder, or rerun with the recipe it was started with"
        )


def train_demo_model(out: Path, work: Path, recipe: Recipe) -> dict:
    """Run stages 0-3 (reusing finished stages in ``work``) and write the final model folder to ``out``."""
    parse_precision(recipe.dit_dtype, DTYPE_PRECISIONS)  # fp32 or bf16 (an InvalidInput, a ValueError)
    config = demo_config(recipe)  # checks the width before anything runs
    torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    work.mkdir(parents=True, exist_ok=True)
    report_path = work / "training.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    check_same_recipe(report.get("recipe"), recipe, work)
    report["recipe"] = asdict(recipe)
    write_json(report_path, report, overwrite=True)  # before any stage: a cut-off run's recipe is known
    start = time.perf_counter()
    cache = work / ("scenes.pt" if recipe.generator == "v1" else f"scenes_{recipe.generator}.pt")
    if cache.is_file():
        opening("rendered scenes", cache)
        data = torch.load(cache, weights_only=True)
    else:
        samples = render_set(0, recipe.scenes, recipe.resolution, recipe.generator, processes=recipe.threads)
        data = scene_tensors(samples, recipe.resolution)
        torch.save(data, cache)
        report["scenes_seconds"] = round(time.perf_counter() - start, 1)
    log({"stage": "scenes", "count": len(data["rgb"]), "seconds": round(time.perf_counter() - start, 1)})
    init, stage1, stage2 = work / "init", work / "stage1_vae", work / "stage2_dit"
    if not (init / FILES["lora"]).is_file():
        write_tiny_model(init, seed=recipe.seed, config=config, overwrite=True)
    if not stage1.is_dir():
        _stage_vae(recipe, data, init, stage1, report)
        write_json(report_path, report, overwrite=True)
    if not stage2.is_dir():
        _stage_dit(recipe, data, stage1, stage2, report)
        write_json(report_path, report, overwrite=True)
    lora = _stage_lora(recipe, stage2, work, report)
    with staged_folder(out, overwrite=True, marker=FILES["config"], what="a model") as tmp:
        for role in ("config", "dit", "vae", "prompt"):  # the stage-2 folder's files as they are
            shutil.copyfile(stage2 / FILES[role], tmp / FILES[role])
        shutil.copyfile(lora, tmp / FILES["lora"])
    report["total_seconds"] = round(time.perf_counter() - start, 1)
    write_json(report_path, report, overwrite=True)
    shutil.copyfile(report_path, out / "training.json")
    return report


def write_scene_set(out: Path, first_seed: int, count: int, resolution: tuple[int, int], generator: str = "v1") -> None:
    """Scenes ``first_seed ..`` of ``generator`` in the generic dataset layout (rgb/*.png, depth/*.npy,
    normals/*.npy)."""
    if (out / "rgb").exists():
        raise OutputExists(f"{out}: already holds a scene set")
    for i, s in enumerate(render_set(first_seed, count, resolution, generator)):
        write_sample(out, f"scene_{first_seed + i}", s.rgb, s.depth, s.normals)
    meta = {"first_seed": first_seed, "count": count, "resolution": list(resolution), "generator": generator}
    write_json(out / "scenes.json", meta)


def constant_baselines(dataset_dir: Path) -> dict[str, float]:
    """What a model that predicts nothing scores on a generic-layout set, with ``evaluate``'s own metrics.

    Depth: a constant map under FE2E's log alignment (it becomes the geometric mean of each image's GT),
    and, stricter, each image's AbsRel-optimal constant (the 1/g-weighted median of its GT, an oracle).
    Normals: the one direction that is best over the whole set (the normalised mean GT normal).
    """
    depth_set, normal_set = open_dataset(dataset_dir, "depth"), open_dataset(dataset_dir, "normals")
    aligned, oracle = [], []
    for item in depth_set.items:
        sample = depth_set.load(item)
        kind = depth_set.kind
        flat = np.full(sample.gt.shape, 0.5)
        aligned.append(evaluate_depth(flat, sample.gt, sample.valid, "log", kind.min_depth, kind.max_depth)["abs_rel"])
        g = sample.gt[sample.valid].astype(np.float64)
        order = np.argsort(g)
        w = np.cumsum(1.0 / g[order])
        best = g[order][np.searchsorted(w, w[-1] / 2)]
        oracle.append(float(np.mean(np.abs(best - g) / g)))
    normals = [normal_set.load(item) for item in normal_set.items]
    mean_normal = normalize(np.sum([s.gt[s.valid].sum(0) for s in normals], axis=0))
    errors = np.concatenate(
        [angular_error(np.broadcast_to(mean_normal, s.gt[s.valid].shape), s.gt[s.valid]) for s in normals]
    )
    return {
        "depth_abs_rel_constant_log_aligned": float(np.mean(aligned)),
        "depth_abs_rel_oracle_constant": float(np.mean(oracle)),
        "normals_mean_angle_best_constant": float(errors.mean()),
        "normals_median_angle_best_constant": float(np.median(errors)),
        "images": len(aligned),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train the demo model")
    train.add_argument("--out", type=Path, required=True)
    train.add_argument("--work", type=Path, default=Path("build/demo_train"))
    for field_name, value in asdict(Recipe()).items():
        if field_name != "resolution":
            train.add_argument("--" + field_name.replace("_", "-"), type=type(value), default=value)
    train.add_argument("--resolution", default="x".join(map(str, DEMO_RESOLUTION)))
    scenes = sub.add_parser("scenes", help="write procedural scenes in the generic evaluation layout")
    scenes.add_argument("--out", type=Path, required=True)
    scenes.add_argument("--first-seed", type=int, default=EVAL_FIRST_SEED)
    scenes.add_argument("--count", type=int, default=60)
    scenes.add_argument("--resolution", default="x".join(map(str, DEMO_RESOLUTION)))
    scenes.add_argument("--generator", choices=sorted(GENERATORS), default="v1")
    baseline = sub.add_parser("baseline", help="constant-prediction scores of a generic-layout set (JSON)")
    baseline.add_argument("dataset", type=Path)
    args = vars(parser.parse_args(argv))
    if args["command"] == "baseline":
        json.dump(constant_baselines(args["dataset"]), sys.stdout, indent=1)
        return
    resolution = parse_resolution(args.pop("resolution"))
    if args.pop("command") == "scenes":
        write_scene_set(args["out"], args["first_seed"], args["count"], resolution, args["generator"])
        return
    out, work = args.pop("out"), args.pop("work")
    report = train_demo_model(out, work, Recipe(resolution=resolution, **args))
    json.dump(report, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
