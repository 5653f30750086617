"""Accuracy against ground truth (``evaluate``) and agreement between engines (``compare``).

``kinds.py`` (dataset families), ``datasets.py`` (reading them), ``metrics.py`` (the metrics),
``run.py`` (running an engine over a dataset). See docs/evaluation.md for the layouts and metrics.
"""
