"""Step1X-Edit DiT checkpoint (official names, connector under ``connector.``) -> ``Step1XEditDiT``."""

from __future__ import annotations

import torch

from ..config import ModelConfig
from ..models.dit import Step1XEditDiT
from .layout import CheckpointLayout, TensorRule, copy_rules, parameter_shapes

T = "transformer."


def _linear(official: str, target: str, kind: str = "copy") -> list[TensorRule]:
    return [TensorRule(f"{official}.{p}", (f"{target}.{p}",), kind) for p in ("weight", "bias")]


def _split_linear(official: str, targets: list[str]) -> list[TensorRule]:
    return [TensorRule(f"{official}.{p}", tuple(f"{t}.{p}" for t in targets), "split") for p in ("weight", "bias")]


def _double_block(i: int) -> list[TensorRule]:
    o, t = f"double_blocks.{i}", f"{T}transformer_blocks.{i}"
    rules = []
    for stream, q, k, v, out, norm_q, norm_k, ff, mod in (
        ("img", "to_q", "to_k", "to_v", "to_out.0", "norm_q", "norm_k", "ff", "norm1"),
        (
            "txt",
            "add_q_proj",
            "add_k_proj",
            "add_v_proj",
            "to_add_out",
            "norm_added_q",
            "norm_added_k",
            "ff_context",
            "norm1_context",
        ),
    ):
        rules += _linear(f"{o}.{stream}_mod.lin", f"{t}.{mod}.linear")
        rules += _split_linear(f"{o}.{stream}_attn.qkv", [f"{t}.attn.{q}", f"{t}.attn.{k}", f"{t}.attn.{v}"])
        rules.append(TensorRule(f"{o}.{stream}_attn.norm.query_norm.scale", (f"{t}.attn.{norm_q}.weight",)))
        rules.append(TensorRule(f"{o}.{stream}_attn.norm.key_norm.scale", (f"{t}.attn.{norm_k}.weight",)))
        rules += _linear(f"{o}.{stream}_attn.proj", f"{t}.attn.{out}")
        rules += _linear(f"{o}.{stream}_mlp.0", f"{t}.{ff}.net.0.proj")
        rules += _linear(f"{o}.{stream}_mlp.2", f"{t}.{ff}.net.2")
    return rules


def _single_block(i: int) -> list[TensorRule]:
    o, t = f"single_blocks.{i}", f"{T}single_transformer_blocks.{i}"
    return [
        *_split_linear(f"{o}.linear1", [f"{t}.attn.to_q", f"{t}.attn.to_k", f"{t}.attn.to_v", f"{t}.proj_mlp"]),
        *_linear(f"{o}.linear2", f"{t}.proj_out"),
        *_linear(f"{o}.modulation.lin", f"{t}.norm.linear"),
        TensorRule(f"{o}.norm.query_norm.scale", (f"{t}.attn.norm_q.weight",)),
        TensorRule(f"{o}.norm.key_norm.scale", (f"{t}.attn.norm_k.weight",)),
    ]


def dit_layout(config: ModelConfig) -> CheckpointLayout:
    """Rules for every tensor of the official DiT checkpoint of ``config``, shapes from a meta model."""
    with torch.device("meta"):
        model = Step1XEditDiT(config)
    rules = [
        *_linear("img_in", f"{T}x_embedder"),
        *_linear("txt_in", f"{T}context_embedder"),
        *_linear("time_in.in_layer", f"{T}time_text_embed.timestep_embedder.linear_1"),
        *_linear("time_in.out_layer", f"{T}time_text_embed.timestep_embedder.linear_2"),
        *_linear("vector_in.in_layer", f"{T}time_text_embed.text_embedder.linear_1"),
        *_linear("vector_in.out_layer", f"{T}time_text_embed.text_embedder.linear_2"),
        *_linear("final_layer.linear", f"{T}proj_out"),
        *_linear("final_layer.adaLN_modulation.1", f"{T}norm_out.linear", "swap_halves"),
    ]
    for i in range(config.dit.depth):
        rules += _double_block(i)
    for i in range(config.dit.depth_single_blocks):
        rules += _single_block(i)
    by_name = {r.official: r for r in rules}
    by_name.update(copy_rules(list(model.connector.state_dict()), "connector.", "connector."))
    return CheckpointLayout(by_name, parameter_shapes(model))


def lora_target_modules(config: ModelConfig) -> list[str]:
    """Official names of every Linear inside the double and single blocks (what FE2E's LoRA adapts)."""
    layout = dit_layout(config)
    shapes = layout.official_shapes()
    return sorted(
        name.removesuffix(".weight")
        for name, shape in shapes.items()
        if name.startswith(("double_blocks.", "single_blocks.")) and name.endswith(".weight") and len(shape) == 2
    )
