"""Producers of deployable graphs: ONNX export and its check, TensorRT build, AOTInductor build.

Never imported by ``engines/``: an engine reads what these wrote through ``artifacts/``.
"""
