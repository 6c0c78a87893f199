"""Evaluation: the open-vocabulary benchmarks (A-150, A-847, PC-59, PC-459, PAS-20, PAS-21), their class lists, and the mIoU metric.

- `metric.py`: `SegmentationConfusionMatrix`, the streaming confusion-matrix accumulator (detectron2's
  `SemSegEvaluator` protocol) that the evaluation script uses, and `segmentation_scores`.
- `ita_mean_iou/`: the same metric as an `evaluate` module, loadable offline by path:
  `evaluate.load(METRIC_PATH)`.
- `panoptic_quality.py`: `PanopticQuality`, PQ / SQ / RQ with panopticapi's rules (void and crowd regions).
- `benchmarks.py`: the registry of A-150, A-847, PC-59, PC-459, PAS-20 and PAS-21, `load_benchmark` for
  their prepared folders and `load_hub_benchmark` for Hub/parquet/imagefolder copies (their names alone, light
  to import, in `benchmark_names.py`).

The names below are imported on first use (they import torch or `datasets`), so that `ita-evaluate`
(`evaluation.cli`) parses its arguments before any of them is loaded.
"""

from pathlib import Path
from typing import TYPE_CHECKING

from ita_segmentation.lazy_names import lazy_names

if TYPE_CHECKING:
    from ..vocabulary_files import read_vocabulary_file
    from .benchmarks import (
        BENCHMARKS,
        VOCABULARY_DIR,
        BenchmarkLayout,
        SegmentationBenchmark,
        benchmark_metadata,
        get_benchmark,
        load_benchmark,
        load_hub_benchmark,
    )
    from .metric import LabelPairHistogram, SegmentationConfusionMatrix, reduce_reference_labels, segmentation_scores
    from .panoptic_quality import PanopticQuality

# The folder of the `evaluate` module; `evaluate.load(METRIC_PATH)` works offline.
METRIC_PATH = str(Path(__file__).parent / "ita_mean_iou")

# Public name -> the module that defines it (relative to this package).
_HOMES = {
    "read_vocabulary_file": "..vocabulary_files",
    "BENCHMARKS": ".benchmarks",
    "VOCABULARY_DIR": ".benchmarks",
    "BenchmarkLayout": ".benchmarks",
    "SegmentationBenchmark": ".benchmarks",
    "benchmark_metadata": ".benchmarks",
    "get_benchmark": ".benchmarks",
    "load_benchmark": ".benchmarks",
    "load_hub_benchmark": ".benchmarks",
    "LabelPairHistogram": ".metric",
    "SegmentationConfusionMatrix": ".metric",
    "reduce_reference_labels": ".metric",
    "segmentation_scores": ".metric",
    "PanopticQuality": ".panoptic_quality",
}

__all__ = [
    "METRIC_PATH",
    "SegmentationConfusionMatrix",
    "PanopticQuality",
    "LabelPairHistogram",
    "segmentation_scores",
    "reduce_reference_labels",
    "BENCHMARKS",
    "VOCABULARY_DIR",
    "BenchmarkLayout",
    "SegmentationBenchmark",
    "benchmark_metadata",
    "get_benchmark",
    "load_benchmark",
    "load_hub_benchmark",
    "read_vocabulary_file",
]

__getattr__, __dir__ = lazy_names(__name__, _HOMES)
