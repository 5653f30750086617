"""fe2e-deploy: FE2E (Step1X-Edit DiT + LoRA) depth and surface normals, deployed."""

__version__ = "0.1.0"
