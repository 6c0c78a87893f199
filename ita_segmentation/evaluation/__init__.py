"""Evaluation: the open-vocabulary benchmarks (A-150, A-847, PC-59, PC-459, PAS-20, PAS-21), their class lists, and the mIoU metric.

- `metric.py`: `SegmentationConfusionMatrix`, the streaming confusion-matrix accumulator (detectron2's
  `SemSegEvaluator` protocol) that the evaluation script uses, and `segmentation_scores`.
- `ita_mean_iou/`: the same metric as an `evaluate` module, loadable offline by path:
  `evaluate.load(METRIC_PATH)`.
- `panoptic_quality.py`: `PanopticQuality`, PQ / SQ / RQ with panopticapi's rules (void and crowd regions).
- `benchmarks.py`: the registry of A-150, A-847, PC-59, PC-459, PAS-20 and PAS-21, `load_benchmark` for
  their prepared folders and `load_hub_benchmark` for Hub/parquet/imagefolder copies.
"""

from pathlib import Path

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
