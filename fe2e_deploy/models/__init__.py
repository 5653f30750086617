"""Model modules: the connector (ours), the DiT (diffusers' Flux transformer) and the VAE."""

from .connector import Qwen2Connector
from .dit import Step1XEditDiT, build_flux_transformer
from .vae import build_vae, decode, encode_mean

__all__ = ["Qwen2Connector", "Step1XEditDiT", "build_flux_transformer", "build_vae", "decode", "encode_mean"]
