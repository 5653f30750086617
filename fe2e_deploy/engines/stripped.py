"""The stripped model in PyTorch: the deployment graph (``models.fused.FE2EGraph``) per resolution.

Eager by default; with ``compile_mode`` the model runs under ``torch.compile`` (static shapes), the
stages kept apart so the stage timers still see them: the VAE encoder and decoder as whole graphs,
the DiT by regional compilation (each double/single block compiled; the 19 + 38 blocks of one kind
share one compiled graph, so compiling takes one block's time instead of 57 blocks', with the same
kernels, while the few ops between blocks stay eager). On CUDA the attention backend order of
:mod:`fe2e_deploy.kernels` applies (also while compiling).

Dynamo keeps one cache per code object, shared by every block of a class in every engine of the
process, and by default at most 8 graphs in it (``torch._dynamo.config.recompile_limit``); with
``fullgraph=True`` one more is a hard error (``FailOnRecompileLimitHit``). Each compiled (engine,
resolution) may add one graph per block class (another shape, linear type or FP8 GEMM setting), so
the limit is raised by one for each: :func:`reserve_compiled_graph`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ..graph_io import BatchProfile
from ..kernels import preferred_attention
from ..loading.stripped import StrippedModel, load_stripped
from ..models.fused import FE2EGraph
from ..precision import DTYPE_PRECISIONS, parse_precision, precision_of, torch_dtype
from ..timing import NO_TIMER, NoTimer, StageTimer
from .base import Engine
from .options import EngineOptions

#: Dynamo's recompile limit when this module was imported (the default is 8).
_BASE_RECOMPILE_LIMIT = torch._dynamo.config.recompile_limit
_compiled_graphs = 0  # (engine, resolution) pairs compiled in this process so far


def reserve_compiled_graph() -> int:
    """Raise Dynamo's recompile limit by one graph per code object (never lowers it); returns the new limit.

    Called once per (engine, resolution) compiled: that many graphs can at most be wanted per block class,
    beyond the base limit; the cost of a larger cache is one more guard check per miss, microseconds.
    """
    global _compiled_graphs
    _compiled_graphs += 1
    limit = max(torch._dynamo.config.recompile_limit, _BASE_RECOMPILE_LIMIT + _compiled_graphs)
    torch._dynamo.config.recompile_limit = limit
    return limit


class StrippedEngine(Engine):
    """image -> depth + normals through a stripped model's weights; one graph per processing size, any batch."""

    marks_stages = True

    def __init__(
        self,
        folder: str | Path | StrippedModel,
        options: EngineOptions | None = None,
        *,
        timer: NoTimer | StageTimer = NO_TIMER,
        compile_mode: str | None = None,
        name: str | None = None,
        **fields: object,
    ):
        """``folder``: a stripped folder, or a model stripped in memory. ``options.dtype`` (fp32, bf16) casts the
        DiT (default: as stored). ``compile_mode``: a ``torch.compile`` mode (batch 1, static shapes)."""
        options = EngineOptions.of(options, **fields)
        super().__init__(options, timer)
        dtype = parse_precision(options.dtype, DTYPE_PRECISIONS) if options.dtype is not None else None
        if isinstance(folder, StrippedModel):
            self.model = folder
        else:
            self.model = load_stripped(folder, self.device, options.progress)
        if dtype is not None:  # a stripped folder may run in another precision than it was stored in
            self.model.dit.cast_weights(torch_dtype(dtype))
        self.compile_mode = compile_mode
        self.profile = BatchProfile.fixed(1) if compile_mode else None  # compiled stages are specialised to batch 1
        kind = "compiled" if compile_mode else "stripped"
        self.name = name or f"{kind}-{precision_of(self.model.dit.dtype)}"
        self._graphs: dict[tuple[int, int], FE2EGraph] = {}
        self._stages: dict[tuple[int, int], tuple[Callable, Callable, Callable]] = {}
        self._blocks_compiled = False

    def graph(self, width: int, height: int) -> FE2EGraph:
        """The deployment graph at a size (its RoPE tables made once per size; the weights are shared)."""
        if (width, height) not in self._graphs:
            self._graphs[width, height] = FE2EGraph(self.model.vae, self.model.dit, width, height).eval()
        return self._graphs[width, height]

    def stages(self, width: int, height: int) -> tuple[Callable, Callable, Callable]:
        """(encoder, DiT step, decode) at a size: the graph's modules, compiled when ``compile_mode`` is set."""
        if (width, height) not in self._stages:
            graph = self.graph(width, height)
            encoder, decode = graph.encoder, graph.decode
            if self.compile_mode:
                reserve_compiled_graph()
                options = {"mode": self.compile_mode, "fullgraph": True, "dynamic": False}
                encoder, decode = torch.compile(encoder, **options), torch.compile(decode, **options)
                if not self._blocks_compiled:  # in place, once: every resolution reuses (and re-specialises) them
                    for block in (*self.model.dit.double_blocks, *self.model.dit.single_blocks):
                        block.compile(**options)
                    self._blocks_compiled = True
            self._stages[width, height] = (encoder, graph.step, decode)
        return self._stages[width, height]

    def run(self, x: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        encoder, step, decode = self.stages(*size)
        with preferred_attention(self.device):
            with self.timer("vae_encode"):
                ref_latent = encoder(x)
            with self.timer("dit"):
                latents = step(ref_latent)
            with self.timer("vae_decode"):
                return decode(*latents)

    def _release(self) -> None:
        self._stages.clear()
        self._graphs.clear()
        del self.model
