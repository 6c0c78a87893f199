"""Semantic segmentation scores from one confusion matrix over a whole split.

The protocol is detectron2's `SemSegEvaluator`, the one behind FC-CLIP's published numbers:
pixels whose reference is the ignore index are dropped, every other pixel adds one count to a
`[num_labels, num_labels]` int64 matrix (rows: reference class, columns: predicted class), and the scores
are read off the matrix once the split is done:

- IoU of a class = TP / (GT + Pred - TP);
- mean IoU and mean accuracy average over the classes that have ground-truth pixels in the split; a class
  absent from the split is left out, even when it was predicted (older detectron2 versions counted it as
  IoU 0, which moved FC-CLIP's PC-459 score from 18.2 to 13.8, fc-clip issue 27);
- frequency-weighted IoU weights each class's IoU by its share of ground-truth pixels;
- pixel accuracy is TP summed over classes / ground-truth pixels.

Two accumulators keep memory bounded by classes x classes, never by the number of images:

- `SegmentationConfusionMatrix` knows `num_labels` and the ignore index up front and adds each image into
  the dense matrix with one `np.bincount`. It is the streaming path the evaluation script uses; in
  distributed evaluation, sum `.matrix` over processes (it is a plain array) before `compute`.
- `LabelPairHistogram` does not need them until the end: it keeps the count of every distinct
  (prediction, reference) value pair seen. It backs the `evaluate` module in `ita_mean_iou/`, whose
  `compute(num_labels=, ignore_index=, reduce_labels=)` only learns the label space after all `add_batch`
  calls (the Hub's `mean_iou` instead stores every full map in its arrow cache).
"""

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["SegmentationConfusionMatrix", "LabelPairHistogram", "segmentation_scores", "reduce_reference_labels"]

# A batch of label maps: a list of `[H, W]` maps (sizes may differ) or a stacked `[B, H, W]` array.
LabelMaps = Sequence[ArrayLike] | np.ndarray

# Pair codes pack a prediction (high half) and a reference (low half) into one uint64; int32 values are
# shifted into [0, 2**32) first.
_PAIR_OFFSET = 2**31
_PAIR_SHIFT = 32


def reduce_reference_labels(reference: ArrayLike, ignore_index: int) -> np.ndarray:
    """The Hub `mean_iou`'s `reduce_labels`: 0 ("other"/"background") becomes `ignore_index`, every other id
    moves down by one, and pixels already at `ignore_index` stay ignored. Returns a new int64 array."""
    reference = np.asarray(reference).astype(np.int64)
    ignored = (reference == 0) | (reference == ignore_index)
    reduced = reference - 1
    reduced[ignored] = ignore_index
    return reduced


def _as_label_map(values: ArrayLike, what: str) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype == bool:
        array = array.astype(np.int64)
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{what} must hold integer class ids, got an array of dtype {array.dtype}")
    return array


def _checked_pair(prediction: ArrayLike, reference: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    prediction = _as_label_map(prediction, "A prediction")
    reference = _as_label_map(reference, "A reference")
    if prediction.shape != reference.shape:
        raise ValueError(
            f"A prediction of shape {prediction.shape} does not match its reference of shape {reference.shape}; "
            "resize predictions to the label map's size before scoring"
        )
    return prediction, reference


def _as_pairs(predictions: LabelMaps | None, references: LabelMaps | None) -> Iterator[tuple[ArrayLike, ArrayLike]]:
    """Yield the (prediction, reference) maps of a batch: lists of maps or stacked `[B, H, W]` arrays."""
    if predictions is None or references is None:
        raise ValueError("Both predictions and references are required")
    if len(predictions) != len(references):
        raise ValueError(f"Got {len(predictions)} predictions but {len(references)} references")
    yield from zip(predictions, references)


def _confusion_from_values(
    predicted: np.ndarray,
    referenced: np.ndarray,
    counts: np.ndarray | None,
    num_labels: int,
    ignore_index: int,
    reduce_labels: bool,
) -> np.ndarray:
    """Dense `[num_labels, num_labels]` matrix from flat value arrays (with optional per-entry counts)."""
    if num_labels < 1:
        raise ValueError(f"num_labels must be at least 1, got {num_labels}")
    predicted = predicted.astype(np.int64, copy=False)
    referenced = reduce_reference_labels(referenced, ignore_index) if reduce_labels else referenced.astype(np.int64)
    bad = (predicted < 0) | (predicted >= num_labels)
    if bad.any():
        values = np.unique(predicted[bad])
        raise ValueError(
            f"Predictions must be class ids in [0, {num_labels}), found {values[:10].tolist()}"
            + (" and more" if values.size > 10 else "")
        )
    scored = referenced != ignore_index
    bad = scored & ((referenced < 0) | (referenced >= num_labels))
    if bad.any():
        values = np.unique(referenced[bad])
        raise ValueError(
            f"References must be class ids in [0, {num_labels}) or the ignore index {ignore_index}"
            + (" (after reduce_labels)" if reduce_labels else "")
            + f", found {values[:10].tolist()}"
            + (" and more" if values.size > 10 else "")
        )
    flat = referenced[scored] * num_labels + predicted[scored]
    weights = None if counts is None else counts[scored]
    matrix = np.bincount(flat, weights=weights, minlength=num_labels * num_labels)
    # bincount with weights returns float64; the counts are integers well below 2**53, so this is exact.
    return matrix.astype(np.int64, copy=False).reshape(num_labels, num_labels)


def segmentation_scores(confusion_matrix: ArrayLike) -> dict[str, Any]:
    """Scores from a `[num_labels, num_labels]` confusion matrix (rows: reference, columns: prediction).

    Returns a dict with float `mean_iou`, `mean_accuracy`, `overall_accuracy` (pixel accuracy) and
    `frequency_weighted_iou`, and float64 arrays `per_category_iou` and `per_category_accuracy` that are
    NaN for classes without ground-truth pixels (those classes are left out of every mean). With no
    ground-truth pixel at all, every score is NaN.
    """
    matrix = np.asarray(confusion_matrix, dtype=np.int64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"The confusion matrix must be square, got shape {matrix.shape}")
    true_positives = np.diag(matrix).astype(np.float64)
    ground_truth = matrix.sum(axis=1).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    present = ground_truth > 0

    per_category_accuracy = np.full(matrix.shape[0], np.nan)
    per_category_iou = np.full(matrix.shape[0], np.nan)
    union = ground_truth + predicted - true_positives
    per_category_accuracy[present] = true_positives[present] / ground_truth[present]
    per_category_iou[present] = true_positives[present] / union[present]

    total = ground_truth.sum()
    if not present.any():
        nan = float("nan")
        mean_iou = mean_accuracy = overall_accuracy = frequency_weighted_iou = nan
    else:
        mean_iou = float(per_category_iou[present].mean())
        mean_accuracy = float(per_category_accuracy[present].mean())
        overall_accuracy = float(true_positives.sum() / total)
        frequency_weighted_iou = float((per_category_iou[present] * ground_truth[present] / total).sum())
    return {
        "mean_iou": mean_iou,
        "mean_accuracy": mean_accuracy,
        "overall_accuracy": overall_accuracy,
        "frequency_weighted_iou": frequency_weighted_iou,
        "per_category_iou": per_category_iou,
        "per_category_accuracy": per_category_accuracy,
    }


class SegmentationConfusionMatrix:
    """Streaming confusion matrix over a split; memory is `num_labels**2` int64 whatever the split size.

    Args:
        num_labels: number of classes K; predictions must lie in [0, K).
        ignore_index: reference value that is not scored (255, or 65535 for 16-bit labels).
        reduce_labels: apply `reduce_reference_labels` to every reference first (labels where 0 means
            "other"/"background" and classes start at 1).

    ```py
    >>> scores = SegmentationConfusionMatrix(num_labels=150, ignore_index=255)
    >>> for prediction, reference in pairs:  # [H, W] integer arrays, one image at a time
    ...     scores.update(prediction, reference)
    >>> scores.compute()["mean_iou"]
    ```
    """

    def __init__(self, num_labels: int, ignore_index: int = 255, reduce_labels: bool = False) -> None:
        if num_labels < 1:
            raise ValueError(f"num_labels must be at least 1, got {num_labels}")
        self.num_labels = int(num_labels)
        self.ignore_index = int(ignore_index)
        self.reduce_labels = bool(reduce_labels)
        self.matrix = np.zeros((self.num_labels, self.num_labels), dtype=np.int64)

    def update(self, prediction: ArrayLike, reference: ArrayLike) -> None:
        """Add one image: `prediction` and `reference` are integer maps of the same shape."""
        prediction, reference = _checked_pair(prediction, reference)
        self.matrix += _confusion_from_values(
            prediction.ravel(), reference.ravel(), None, self.num_labels, self.ignore_index, self.reduce_labels
        )

    def update_batch(self, predictions: LabelMaps, references: LabelMaps) -> None:
        """Add a batch: lists of maps (sizes may differ) or stacked `[B, H, W]` arrays."""
        for prediction, reference in _as_pairs(predictions, references):
            self.update(prediction, reference)

    def merge(self, other: "SegmentationConfusionMatrix") -> None:
        """Add the counts of another accumulator over the same label space (e.g. from another process)."""
        if (other.num_labels, other.ignore_index, other.reduce_labels) != (
            self.num_labels,
            self.ignore_index,
            self.reduce_labels,
        ):
            raise ValueError("Only accumulators with the same num_labels, ignore_index and reduce_labels can merge")
        self.matrix += other.matrix

    def reset(self) -> None:
        self.matrix[...] = 0

    def compute(self) -> dict[str, Any]:
        """Scores so far, see `segmentation_scores`."""
        return segmentation_scores(self.matrix)


class LabelPairHistogram:
    """Counts of distinct (prediction value, reference value) pairs, for when the label space is only known
    at the end. Its size is bounded by the number of distinct pairs (at most about
    (num_labels + 1) * num_labels), not by the number of images; values must fit in int32.
    """

    # Pending per-image histograms are merged into the totals once they hold as many entries as the totals
    # (at least _MIN_MERGE) or number _MAX_PENDING images, which keeps memory within about twice the number
    # of distinct pairs.
    _MIN_MERGE = 1 << 16
    _MAX_PENDING = 64

    def __init__(self) -> None:
        self._codes = np.zeros(0, dtype=np.uint64)
        self._counts = np.zeros(0, dtype=np.int64)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_size = 0

    def update(self, prediction: ArrayLike, reference: ArrayLike) -> None:
        """Add one image: `prediction` and `reference` are integer maps of the same shape."""
        prediction, reference = _checked_pair(prediction, reference)
        for array, what in ((prediction, "Prediction"), (reference, "Reference")):
            if array.size and (array.min() < -_PAIR_OFFSET or array.max() >= _PAIR_OFFSET):
                raise ValueError(f"{what} values must fit in int32, found [{array.min()}, {array.max()}]")
        high = (prediction.ravel().astype(np.int64) + _PAIR_OFFSET).astype(np.uint64) << np.uint64(_PAIR_SHIFT)
        codes = high | (reference.ravel().astype(np.int64) + _PAIR_OFFSET).astype(np.uint64)
        codes, counts = np.unique(codes, return_counts=True)
        self._pending.append((codes, counts.astype(np.int64)))
        self._pending_size += codes.size
        if self._pending_size >= max(self._codes.size, self._MIN_MERGE) or len(self._pending) >= self._MAX_PENDING:
            self._merge_pending()

    def update_batch(self, predictions: LabelMaps, references: LabelMaps) -> None:
        """Add a batch: lists of maps (sizes may differ) or stacked `[B, H, W]` arrays."""
        for prediction, reference in _as_pairs(predictions, references):
            self.update(prediction, reference)

    def _merge_pending(self) -> None:
        if not self._pending:
            return
        codes = np.concatenate([self._codes] + [codes for codes, _ in self._pending])
        counts = np.concatenate([self._counts] + [counts for _, counts in self._pending])
        self._codes, inverse = np.unique(codes, return_inverse=True)
        self._counts = np.bincount(inverse, weights=counts, minlength=self._codes.size).astype(np.int64)
        self._pending, self._pending_size = [], 0

    @property
    def num_pairs(self) -> int:
        """Number of distinct (prediction, reference) pairs stored."""
        self._merge_pending()
        return int(self._codes.size)

    def pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`(prediction values, reference values, pixel counts)`, three int64 arrays of length `num_pairs`."""
        self._merge_pending()
        predicted = (self._codes >> np.uint64(_PAIR_SHIFT)).astype(np.int64) - _PAIR_OFFSET
        referenced = (self._codes & np.uint64((1 << _PAIR_SHIFT) - 1)).astype(np.int64) - _PAIR_OFFSET
        return predicted, referenced, self._counts.copy()

    def confusion_matrix(self, num_labels: int, ignore_index: int = 255, reduce_labels: bool = False) -> np.ndarray:
        """The `[num_labels, num_labels]` int64 matrix that `SegmentationConfusionMatrix` would hold."""
        predicted, referenced, counts = self.pairs()
        return _confusion_from_values(predicted, referenced, counts, num_labels, ignore_index, reduce_labels)

    def reset(self) -> None:
        self._codes = np.zeros(0, dtype=np.uint64)
        self._counts = np.zeros(0, dtype=np.int64)
        self._pending = []
        self._pending_size = 0
