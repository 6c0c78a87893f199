"""`evaluate` metric: mean IoU with detectron2's `SemSegEvaluator` protocol, loadable offline by path.

`evaluate.load` copies this one file into its modules cache, so it cannot import its neighbours relatively;
it imports the installed `modeling_ita` package instead, whose `metric.py` holds the single implementation.
"""

from typing import Any, cast

import datasets
import evaluate
from numpy.typing import ArrayLike

from ita_segmentation.evaluation.metric import LabelMaps, LabelPairHistogram, segmentation_scores

_DESCRIPTION = """
Mean intersection-over-union for semantic segmentation, computed as detectron2's SemSegEvaluator does: one
confusion matrix over the whole split, IoU = TP / (GT + Pred - TP) per class, and means taken over the
classes that have ground-truth pixels in the split (classes absent from the split are left out, and their
per-category IoU and accuracy are NaN). Called like the Hub's `mean_iou`, and additionally returns the
frequency-weighted IoU.

Unlike the Hub's `mean_iou`, which writes every full prediction and reference map to its arrow cache
(about 1 MB per 512x512 image, and several times that in memory at `compute`), `add` and `add_batch` here
only keep the count of each distinct (prediction, reference) value pair, so memory is bounded by
classes x classes. The price is that the module runs in one process (`num_process=1`): in distributed
evaluation, sum `ita_segmentation.evaluation.SegmentationConfusionMatrix.matrix` over processes instead.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of integer maps, or a `[B, H, W]` array): predicted class ids in [0, num_labels).
    references (`list` of integer maps, or a `[B, H, W]` array): ground-truth class ids; `ignore_index`
        pixels are not scored.
    num_labels (`int`): number of classes.
    ignore_index (`int`): reference value that is not scored (255, or 65535 for 16-bit labels).
    reduce_labels (`bool`, defaults to `False`): references use 0 for "other"/"background" and start their
        classes at 1: 0 becomes `ignore_index` and every other id moves down by one.
Returns:
    `mean_iou` (`float`), `mean_accuracy` (`float`), `overall_accuracy` (`float`, pixel accuracy),
    `frequency_weighted_iou` (`float`), `per_category_iou` and `per_category_accuracy` (`ndarray` of
    shape `[num_labels]`, NaN for classes without ground-truth pixels).
Examples:
    >>> metric = evaluate.load(ita_segmentation.evaluation.METRIC_PATH)
    >>> metric.add_batch(predictions=[[[1, 2], [3, 0]]], references=[[[1, 2], [3, 255]]])
    >>> metric.compute(num_labels=4, ignore_index=255)["mean_iou"]
    1.0
"""

_CITATION = """
@inproceedings{yu2023fcclip,
  title={Convolutions Die Hard: Open-Vocabulary Segmentation with Single Frozen Convolutional CLIP},
  author={Yu, Qihang and He, Ju and Deng, Xueqing and Shen, Xiaohui and Chen, Liang-Chieh},
  booktitle={NeurIPS},
  year={2023}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ItaMeanIou(evaluate.Metric):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.num_process != 1:
            raise NotImplementedError(
                "ita_mean_iou keeps its counts in memory and runs in one process; in distributed evaluation, "
                "sum ita_segmentation.evaluation.SegmentationConfusionMatrix.matrix over processes instead"
            )
        self._histogram = LabelPairHistogram()

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.List(datasets.List(datasets.Value("int64"))),
                    "references": datasets.List(datasets.List(datasets.Value("int64"))),
                }
            ),
            reference_urls=[
                "https://github.com/facebookresearch/detectron2/blob/main/detectron2/evaluation/sem_seg_evaluation.py"
            ],
        )

    def add(self, *, prediction: ArrayLike | None = None, reference: ArrayLike | None = None) -> None:
        """Add one prediction map and its reference map."""
        # A missing map (None) is refused by the histogram, which names it (TypeError).
        self._histogram.update(cast(ArrayLike, prediction), cast(ArrayLike, reference))

    def add_batch(
        self,
        *,
        predictions: LabelMaps | None = None,
        references: LabelMaps | None = None,
    ) -> None:
        """Add a batch of prediction maps and their reference maps."""
        # Missing maps (None) are refused by the histogram, which names them (ValueError).
        self._histogram.update_batch(cast(LabelMaps, predictions), cast(LabelMaps, references))

    def compute(
        self,
        *,
        predictions: LabelMaps | None = None,
        references: LabelMaps | None = None,
        num_labels: int | None = None,
        ignore_index: int | None = None,
        reduce_labels: bool = False,
    ) -> dict[str, Any]:
        """Score everything added so far (plus `predictions`/`references` if given), then start afresh."""
        if num_labels is None or ignore_index is None:
            raise ValueError(
                "ita_mean_iou needs num_labels and ignore_index, e.g. compute(num_labels=150, ignore_index=255)"
            )
        if predictions is not None or references is not None:
            self.add_batch(predictions=predictions, references=references)
        histogram, self._histogram = self._histogram, LabelPairHistogram()
        return segmentation_scores(histogram.confusion_matrix(num_labels, ignore_index, reduce_labels))
