"""Accuracy against ground truth (``evaluate``) and agreement between engines (``compare``).

See docs/evaluation.md for the dataset layouts and the metric definitions.
"""

from __future__ import annotations

from .datasets import DATASET_KINDS, TASKS, EvalDataset, open_dataset
from .metrics import ALIGNMENTS, DEPTH_METRICS, NORMAL_METRICS, align_depth, depth_metrics, normal_metrics
from .run import compare_engines, evaluate_engine, metrics_table, write_json

__all__ = [
    "ALIGNMENTS",
    "DATASET_KINDS",
    "DEPTH_METRICS",
    "NORMAL_METRICS",
    "TASKS",
    "EvalDataset",
    "align_depth",
    "compare_engines",
    "depth_metrics",
    "evaluate_engine",
    "metrics_table",
    "normal_metrics",
    "open_dataset",
    "write_json",
]
