"""``strip``: fold FE2E's fixed conditioning (t = 1, empty prompt) into constants.

Reads the official DiT checkpoint (merged with the LoRA, or with ``lora`` applied here; stored in
BF16, FP32 or FP8 like the official ``step1x-edit-i1258-FP8.safetensors``) one tensor at a time, each
in FP32 (exact for every stored dtype), and writes a deployment folder that later stages load without
the original checkpoint or the connector:

``STRIPPED/stripped_dit.safetensors``
    the kept official weights (``img_in``, the blocks' attention/MLP linears and qk-norm scales,
    ``final_layer.linear``) in the deployment dtype, plus FP32 constants: ``txt`` [L, H] (text
    tokens after ``txt_in``), ``target_token`` [H] (``img_in`` of z0 = 0, i.e. its bias),
    ``double_blocks.{i}.img_mod`` / ``txt_mod`` [6, H], ``single_blocks.{i}.modulation`` [3, H]
    and ``final_layer.modulation`` [2, H] (shift, scale, gate order of the official code).
``STRIPPED/vae.safetensors``
    the official VAE file, copied.
``STRIPPED/stripped.json``
    format version, model config, text length, dtype, t, sources with SHA-256, parameter counts.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import __version__
from .artifacts.stripped import ParameterCounts, SourceRecord, StrippedMeta, StrippedSources
from .config import ModelConfig
from .files.atomic import atomic_write, check_folder_target, staged_folder
from .files.hashing import sha256_file
from .loading import load_vae
from .loading.checkpoint import check_names_and_shapes, open_safetensors, set_tensor, storage_dtypes
from .loading.dit_layout import dit_layout
from .loading.layout import parameter_shapes
from .loading.prompt import PromptEmbedding, load_prompt_embedding
from .loading.stripped import StrippedModel
from .loading.vae_layout import vae_layout
from .loading.writer import SafetensorsWriter
from .lora import read_kohya_lora
from .models.connector import Qwen2Connector, sinusoidal_embedding
from .models.stripped import StrippedDiT
from .synthetic import describe_prompt

T = 1.0
FOLDED_PREFIXES = ("connector.", "time_in.", "vector_in.", "txt_in.", "final_layer.adaLN_modulation.")
FOLDED_INFIXES = (".img_mod.lin.", ".txt_mod.lin.", ".modulation.lin.")


def is_folded(official_name: str) -> bool:
    """True for the official tensors that strip evaluates into constants."""
    return official_name.startswith(FOLDED_PREFIXES) or any(s in official_name for s in FOLDED_INFIXES)


@dataclass
class StripReport:
    out_dir: Path
    params_before: int
    params_after: int
    folded_params: int


def stripped_shapes(config: ModelConfig, txt_len: int) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = StrippedDiT(config, txt_len)
    return {k: tuple(v) for k, v in parameter_shapes(model).items()}


def parameter_counts(config: ModelConfig, txt_len: int) -> tuple[int, int]:
    """(official DiT parameters incl. connector, stripped DiT weights) for a config; built on meta.

    Constants (text tokens, modulation vectors) are not counted as parameters.
    """
    official = dit_layout(config).official_shapes()
    shapes = stripped_shapes(config, txt_len)
    before = sum(torch.Size(s).numel() for s in official.values())
    after = sum(torch.Size(shapes[n]).numel() for n in official if not is_folded(n))
    return before, after


def describe_source(source) -> SourceRecord:
    """How ``stripped.json`` records a source: a file's path and SHA-256, or an in-memory source's own record."""
    if isinstance(source, PromptEmbedding):
        return describe_prompt(source)
    if isinstance(source, str | Path):
        return SourceRecord(path=str(source), sha256=sha256_file(source))
    return source.describe()


def stripped_specs(config: ModelConfig, txt_len: int, dtype: torch.dtype) -> dict[str, tuple[torch.dtype, tuple]]:
    """Name -> (dtype, shape) of every stripped tensor: kept official weights in ``dtype``, constants FP32."""
    official = dit_layout(config).official_shapes()
    shapes = stripped_shapes(config, txt_len)
    kept = {n for n in official if not is_folded(n)}
    return {n: (dtype if n in kept else torch.float32, shapes[n]) for n in sorted(shapes)}


def stripped_values(
    handle, config: ModelConfig, prompt: PromptEmbedding, lora: dict, dtype: torch.dtype
) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of the stripped model in :func:`stripped_specs` order, read one official tensor at a time.

    ``handle`` is an opened official DiT checkpoint (a file or a synthetic source); ``lora`` (from
    ``read_kohya_lora``) is merged on the fly. Tensors come on the source's device.
    """

    def get(name: str) -> torch.Tensor:
        """An official tensor in FP32, with the LoRA delta added when one targets it."""
        tensor = handle.get_tensor(name).float()
        pair = lora.get(name.removesuffix(".weight")) if name.endswith(".weight") else None
        return tensor + pair.delta().to(tensor.device) if pair else tensor

    constants = fold_constants(config, prompt, get)
    specs = stripped_specs(config, prompt.length, dtype)
    missing = set(specs) - set(dit_layout(config).official_shapes()) - set(constants)
    if missing:  # cannot happen for a consistent layout
        raise AssertionError(f"stripped model has no source for {sorted(missing)[:5]}")
    for name, (tensor_dtype, shape) in specs.items():
        value = constants.pop(name) if name in constants else get(name)
        yield name, value.to(tensor_dtype).reshape(shape)


def strip_model(
    dit_path,
    prompt_path: str | Path | PromptEmbedding,
    vae_path,
    out_dir: str | Path,
    config: ModelConfig,
    *,
    lora: str | Path | None = None,
    dtype: torch.dtype = torch.bfloat16,
    overwrite: bool = False,
    progress: bool = True,
) -> StripReport:
    """Write the stripped deployment folder; memory stays at about one tensor plus the connector.

    The folder is written whole or not at all (:func:`fe2e_deploy.files.atomic.staged_folder`): an
    existing stripped folder is replaced only with ``overwrite``, a non-empty folder of another kind never.

    ``dit_path`` / ``vae_path``: official files, or synthetic sources (:mod:`fe2e_deploy.synthetic`);
    ``prompt_path``: the ``.npz`` file or an in-memory :class:`PromptEmbedding`.
    """
    out_dir = Path(out_dir)
    folder = {"overwrite": overwrite, "marker": StrippedMeta.FILE, "what": "a stripped model"}
    check_folder_target(out_dir, **folder)  # before the long part; checked again when the folder is swapped in
    prompt = _prompt(prompt_path, config)
    deltas = read_kohya_lora(lora, config) if lora else {}
    official = dit_layout(config).official_shapes()
    vae_shapes = vae_layout(config.vae).official_shapes()
    with open_safetensors(vae_path) as vae_handle:  # validate the VAE before the long part
        check_names_and_shapes(vae_path, vae_handle, vae_shapes, "VAE checkpoint")

    # built whole in a hidden sibling folder, then swapped in: never new weights under an old stripped.json
    with staged_folder(out_dir, **folder) as staging, open_safetensors(dit_path) as handle:
        check_names_and_shapes(dit_path, handle, official, "DiT checkpoint")
        storage_dtypes(dit_path, handle, official)  # FP8-stored (the official FP8 file) is fine: read as FP32
        specs = stripped_specs(config, prompt.length, dtype)
        metadata = {"format": "pt", "fe2e_deploy_format": StrippedMeta.FORMAT}
        values = stripped_values(handle, config, prompt, deltas, dtype)
        with SafetensorsWriter(staging / StrippedMeta.WEIGHTS, specs, metadata) as writer:
            for name, value in tqdm(values, total=len(specs), desc="strip", disable=not progress, leave=False):
                writer.write(name, value.cpu())
        _write_vae(vae_path, vae_shapes, staging / StrippedMeta.VAE)
        meta = stripped_meta(config, prompt.length, dtype, _sources(dit_path, prompt_path, vae_path, lora))
        meta.write(staging / StrippedMeta.FILE)
    counts = meta.parameters
    return StripReport(out_dir, counts.official_dit, counts.stripped_dit, counts.folded)


def _write_vae(vae_path, vae_shapes: dict[str, tuple[int, ...]], path: Path) -> None:
    """The official VAE file copied to ``path``; a synthetic VAE written in the official layout, FP32."""
    if isinstance(vae_path, str | Path):
        atomic_write(path, lambda p: shutil.copyfile(vae_path, p))
        return
    specs = {n: (torch.float32, vae_shapes[n]) for n in sorted(vae_shapes)}
    with open_safetensors(vae_path) as vae_handle, SafetensorsWriter(path, specs, {"format": "pt"}) as writer:
        for name in sorted(vae_shapes):
            writer.write(name, vae_handle.get_tensor(name).float().cpu())


def strip_in_memory(
    dit_source,
    prompt_source: str | Path | PromptEmbedding,
    vae_source,
    config: ModelConfig,
    lora_path: str | Path | None = None,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
) -> StrippedModel:
    """The stripped model built directly on ``device`` (no files written): what ``strip`` + ``load_stripped`` give.

    Used by ``benchmark --synthetic-weights`` to build the 12 B model's deployment form on a GPU
    without writing 17 GB; peak memory is the stripped model plus the connector in FP32.
    """
    device = torch.device(device)
    prompt = _prompt(prompt_source, config)
    prompt = PromptEmbedding(prompt.embeds.to(device), prompt.mask.to(device))
    deltas = read_kohya_lora(lora_path, config) if lora_path else {}
    with torch.device("meta"):
        dit = StrippedDiT(config, prompt.length)
    with open_safetensors(dit_source) as handle:
        official = dit_layout(config).official_shapes()
        check_names_and_shapes(dit_source, handle, official, "DiT checkpoint")
        storage_dtypes(dit_source, handle, official)
        for name, value in stripped_values(handle, config, prompt, deltas, dtype):
            set_tensor(dit, name, value.to(device).contiguous())
    vae = load_vae(config, vae_source, torch.float32, device, progress=False)
    meta = stripped_meta(config, prompt.length, dtype, _sources(dit_source, prompt_source, vae_source, lora_path))
    return StrippedModel(dit.eval(), vae, meta, config, None)


def stripped_meta(config: ModelConfig, txt_len: int, dtype: torch.dtype, sources: StrippedSources) -> StrippedMeta:
    """``stripped.json`` (also the ``meta`` of a model stripped in memory)."""
    before, after = parameter_counts(config, txt_len)
    return StrippedMeta(
        fe2e_deploy=__version__,
        model_config=config.to_dict(),
        txt_len=txt_len,
        dtype=str(dtype).removeprefix("torch."),
        t=T,
        sources=sources,
        parameters=ParameterCounts(official_dit=before, stripped_dit=after, folded=before - after),
    )


def _prompt(source: str | Path | PromptEmbedding, config: ModelConfig) -> PromptEmbedding:
    if isinstance(source, PromptEmbedding):
        return source
    return load_prompt_embedding(source, config.connector.in_channels)


def _sources(dit, prompt, vae, lora) -> StrippedSources:
    return StrippedSources(
        dit=describe_source(dit),
        prompt_embedding=describe_source(prompt),
        vae=describe_source(vae),
        lora=describe_source(lora) if lora else None,
    )


@torch.no_grad()
def fold_constants(config: ModelConfig, prompt, get) -> dict[str, torch.Tensor]:
    """Evaluate the connector, embedders and every modulation at t = 1 under the empty prompt (FP32)."""
    with torch.device("meta"):
        connector = Qwen2Connector(config.connector)
    for name in parameter_shapes(connector):
        set_tensor(connector, name, get("connector." + name))
    t = torch.tensor([T], device=prompt.embeds.device)
    txt_raw, pooled = connector(prompt.embeds[None], t, prompt.mask[None])
    del connector

    def lin(prefix: str, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, get(prefix + ".weight"), get(prefix + ".bias"))

    vec = lin("time_in.out_layer", F.silu(lin("time_in.in_layer", sinusoidal_embedding(t * 1000))))
    vec = vec + lin("vector_in.out_layer", F.silu(lin("vector_in.in_layer", pooled)))
    silu_vec = F.silu(vec)[0]
    hidden = config.dit.hidden_size
    out = {"txt": lin("txt_in", txt_raw)[0], "target_token": get("img_in.bias")}
    for i in range(config.dit.depth):
        for stream in ("img", "txt"):
            name = f"double_blocks.{i}.{stream}_mod"
            out[name] = lin(f"{name}.lin", silu_vec).view(6, hidden)
    for i in range(config.dit.depth_single_blocks):
        out[f"single_blocks.{i}.modulation"] = lin(f"single_blocks.{i}.modulation.lin", silu_vec).view(3, hidden)
    out["final_layer.modulation"] = lin("final_layer.adaLN_modulation.1", silu_vec).view(2, hidden)
    return out
