"""The compiled stripped engine (``torch.compile`` regional): how many graphs Dynamo keeps, over sizes and engines."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.eval_frame import _debug_get_cache_entry_list

from fe2e_deploy.engines import stripped as stripped_engine
from fe2e_deploy.engines.stripped import StrippedEngine
from fe2e_deploy.models.stripped import DoubleBlock, SingleBlock
from fe2e_deploy.processing import preprocess
from fe2e_deploy.scenes import synthetic_scene
from fe2e_deploy.strip import strip_in_memory
from fe2e_deploy.synthetic import SyntheticModel

pytestmark = pytest.mark.slow  # compiles


def graphs(block: type[torch.nn.Module]) -> int:
    """Graphs Dynamo holds for a block class's forward (one cache per code object, shared by every instance)."""
    return len(_debug_get_cache_entry_list(block.forward.__code__))


def run_at(engine: StrippedEngine, width: int, height: int) -> None:
    """The engine's compiled stages at a processing size, as ``predict`` runs them (under inference_mode)."""
    with torch.inference_mode():
        engine.run(preprocess(synthetic_scene(width, height, seed=0), (width, height)), (width, height))


def tiny_engine() -> StrippedEngine:
    synth = SyntheticModel.create("tiny", seed=0)
    model = strip_in_memory(synth.dit, synth.prompt(), synth.vae, synth.config, dtype=torch.bfloat16)
    return StrippedEngine(model, compile_mode="default")


def test_each_block_class_gets_one_graph_per_size():
    """Under inference_mode the first double block's text input used to be a view of a normal buffer while every
    later block's inputs are inference tensors: two graphs for one shape, the limit used up twice as fast."""
    torch._dynamo.reset()
    with tiny_engine() as engine:
        run_at(engine, 32, 32)
        assert (graphs(DoubleBlock), graphs(SingleBlock)) == (1, 1)
        run_at(engine, 48, 32)
        assert (graphs(DoubleBlock), graphs(SingleBlock)) == (2, 2)


def test_more_compiled_sizes_than_the_recompile_limit(monkeypatch):
    """Each compiled (engine, size) reserves one more graph per code object: a limit of 1 that would fail the
    second size (``FailOnRecompileLimitHit``, fullgraph=True) is raised instead, in one engine and across two."""
    torch._dynamo.reset()
    monkeypatch.setattr(stripped_engine, "_BASE_RECOMPILE_LIMIT", 1)
    monkeypatch.setattr(stripped_engine, "_compiled_graphs", 0)
    sizes = [(32, 32), (48, 32), (32, 48)]
    # Set and restored by hand: pytest's monkeypatch deletes a torch config entry on undo (then "does not exist").
    before = torch._dynamo.config.recompile_limit
    torch._dynamo.config.recompile_limit = 1
    try:
        with tiny_engine() as engine:
            for width, height in sizes[:2]:
                run_at(engine, width, height)
        with tiny_engine() as engine:  # another engine, one more size
            run_at(engine, *sizes[2])
        assert torch._dynamo.config.recompile_limit == 4
    finally:
        torch._dynamo.config.recompile_limit = before
        torch._dynamo.reset()
