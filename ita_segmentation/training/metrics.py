"""mIoU during training: the Trainer's `compute_metrics`, batch by batch, with the evaluation's confusion matrix."""

from typing import Any

import numpy as np
import torch
from transformers.trainer_utils import EvalPrediction

from ..evaluation.metric import SegmentationConfusionMatrix
from .data import IGNORE_LABEL

__all__ = ["ITASegmentationMetrics"]


class ITASegmentationMetrics:
    """`compute_metrics` for `batch_eval_metrics=True`: adds each batch's argmax maps to one confusion matrix
    (`evaluation.metric.SegmentationConfusionMatrix`, detectron2's protocol) and returns mean IoU, mean
    accuracy, pixel accuracy and frequency-weighted IoU at the last batch.

    Predictions and references arrive as `[B, L]` rows of flattened maps (from `ITATrainer.prediction_step`),
    padded with `IGNORE_LABEL`, which also marks unlabelled pixels.
    """

    def __init__(self, num_labels: int) -> None:
        self.confusion = SegmentationConfusionMatrix(num_labels, ignore_index=IGNORE_LABEL)

    def reset(self) -> None:
        self.confusion.reset()

    def __call__(self, eval_prediction: EvalPrediction, compute_result: bool = False) -> dict[str, float]:
        predictions = _to_numpy(eval_prediction.predictions)
        references = _to_numpy(eval_prediction.label_ids)
        scored = references != IGNORE_LABEL
        self.confusion.update(predictions[scored], references[scored])
        if not compute_result:
            return {}
        scores = self.confusion.compute()
        self.confusion.reset()
        return {key: scores[key] for key in ("mean_iou", "mean_accuracy", "overall_accuracy", "frequency_weighted_iou")}


def _to_numpy(values: Any) -> np.ndarray:
    if isinstance(values, (list, tuple)):
        values = values[0]
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)
