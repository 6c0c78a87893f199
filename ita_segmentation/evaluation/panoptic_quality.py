"""Panoptic quality (PQ, SQ, RQ) with the rules of COCO's reference code, panopticapi's `pq_compute`.

Per image, segments are matched within a category when their IoU exceeds 0.5 (so each segment matches at most
one); with the ground truth's unlabelled pixels (id 0, "void") left out of the union: IoU = intersection /
(predicted area + true area - intersection - the predicted segment's pixels on void). Then, per category:

- a match is a true positive and adds its IoU;
- an unmatched ground-truth segment is a false negative, unless it is a crowd region (`iscrowd`), which is
  never matched nor counted;
- an unmatched predicted segment is a false positive, unless more than half of it lies on void pixels plus the
  crowd region of its own category;
- predicted pixels with id 0 belong to no segment.

Over a split: per category PQ = sum IoU / (TP + FP/2 + FN/2), SQ = sum IoU / TP (0 without TP),
RQ = TP / (TP + FP/2 + FN/2); the "all", "things" and "stuff" scores average these over the categories of
that group with at least one TP, FP or FN in the split (panopticapi's `pq_average`).

Why not torchmetrics' `PanopticQuality` (checked with torchmetrics 1.9.0): it has no crowd regions, and it
treats "void" symmetrically: it also removes a true segment's pixels on predicted void from the union and
does not count a true segment that lies mostly on predicted void as a false negative. panopticapi does
neither, and FC-CLIP's panoptic output leaves pixels unassigned, so its scores would come out higher. It also
merges all segments of a stuff category into one. `tests/test_panoptic_quality.py` compares the two where
their rules agree and shows where they differ.

Memory: four numbers per category, whatever the number of images. A reference segment's area is its `area`
in `segments_info` when given, as panopticapi reads it (ADE20K panoptic's stuff areas count pixels that things
cover in the PNG), else its pixel count.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["PanopticQuality"]

# Pairs of (true id, predicted id) packed into one integer, as panopticapi does.
_OFFSET = 256**3


class PanopticQuality:
    """Streaming PQ / SQ / RQ accumulator.

    Args:
        categories (`dict[int, bool]`): category id -> whether it is a thing (`isthing`). Segments of other
            categories raise a `ValueError`.

    Example:

    ```python
    >>> metric = PanopticQuality({1: True, 2: False})
    >>> metric.add(pred_ids, [{"id": 5, "category_id": 1}], true_ids, [{"id": 3, "category_id": 1, "iscrowd": 0}])
    >>> metric.compute()["all"]["pq"]
    ```
    """

    def __init__(self, categories: Mapping[int, bool]) -> None:
        if not categories:
            raise ValueError("categories is empty: give {category_id: isthing} for every category")
        self.categories = {int(category): bool(isthing) for category, isthing in categories.items()}
        self._index = {category: index for index, category in enumerate(self.categories)}
        size = len(self.categories)
        self.iou = np.zeros(size, dtype=np.float64)
        self.tp = np.zeros(size, dtype=np.int64)
        self.fp = np.zeros(size, dtype=np.int64)
        self.fn = np.zeros(size, dtype=np.int64)
        self.num_images = 0

    def _segments(self, segments, what, crowd_allowed):
        table = {}
        for segment in segments:
            segment_id, category = int(segment["id"]), int(segment["category_id"])
            if segment_id == 0:
                raise ValueError(f"{what}: segment id 0 is reserved for unlabelled pixels")
            if segment_id in table:
                raise ValueError(f"{what}: segment id {segment_id} appears twice in segments_info")
            if category not in self._index:
                raise ValueError(f"{what}: segment {segment_id} has unknown category_id {category}")
            crowd = bool(segment.get("iscrowd", 0)) if crowd_allowed else False
            table[segment_id] = (category, crowd, segment.get("area"))
        return table

    def add(
        self,
        prediction: ArrayLike,
        prediction_segments: Sequence[Mapping[str, Any]],
        reference: ArrayLike,
        reference_segments: Sequence[Mapping[str, Any]],
        where: str = "image",
    ) -> None:
        """Add one image: `prediction` / `reference` are `[H, W]` integer segment-id maps (0 = no segment /
        void), `*_segments` their `segments_info` lists (`id`, `category_id`; for the reference also `iscrowd`
        and optionally `area`).

        A predicted id present in the map but not in its list, or listed but absent from the map, raises a
        `ValueError` (as panopticapi's checks do).
        """
        prediction, reference = np.asarray(prediction), np.asarray(reference)
        if prediction.shape != reference.shape or prediction.ndim != 2:
            raise ValueError(
                f"{where}: prediction {prediction.shape} and reference {reference.shape} must be [H, W] maps of one size"
            )
        predicted = self._segments(prediction_segments, f"{where} (prediction)", crowd_allowed=False)
        true = self._segments(reference_segments, f"{where} (reference)", crowd_allowed=True)

        ids, areas = np.unique(prediction, return_counts=True)
        predicted_area = {}
        for segment_id, area in zip(ids.tolist(), areas.tolist()):
            if segment_id == 0:
                continue
            if segment_id not in predicted:
                raise ValueError(f"{where}: predicted segment id {segment_id} is in the map but not in segments_info")
            predicted_area[segment_id] = area
        missing = sorted(set(predicted) - set(predicted_area))
        if missing:
            raise ValueError(f"{where}: predicted segment ids {missing} are in segments_info but not in the map")
        ids, areas = np.unique(reference, return_counts=True)
        true_area = dict(zip(ids.tolist(), areas.tolist()))
        # panopticapi takes the true areas from the annotations: they can exceed the pixels left in the PNG
        # (ADE20K panoptic writes stuff first and things over it).
        true_area.update({true_id: int(area) for true_id, (_, _, area) in true.items() if area is not None})

        pairs, counts = np.unique(
            reference.astype(np.uint64) * _OFFSET + prediction.astype(np.uint64), return_counts=True
        )
        overlap = {(int(pair // _OFFSET), int(pair % _OFFSET)): int(count) for pair, count in zip(pairs, counts)}

        matched_true, matched_predicted = set(), set()
        for (true_id, predicted_id), intersection in overlap.items():
            if true_id not in true or predicted_id not in predicted:
                continue
            category, crowd, _ = true[true_id]
            if crowd or predicted[predicted_id][0] != category:
                continue
            union = predicted_area[predicted_id] + true_area[true_id] - intersection - overlap.get((0, predicted_id), 0)
            iou = intersection / union
            if iou > 0.5:
                index = self._index[category]
                self.tp[index] += 1
                self.iou[index] += iou
                matched_true.add(true_id)
                matched_predicted.add(predicted_id)

        crowd_of_category = {}
        for true_id, (category, crowd, _) in true.items():
            if true_id in matched_true:
                continue
            if crowd:
                crowd_of_category[category] = true_id
                continue
            self.fn[self._index[category]] += 1
        for predicted_id, (category, _, _) in predicted.items():
            if predicted_id in matched_predicted:
                continue
            ignored = overlap.get((0, predicted_id), 0)
            if category in crowd_of_category:
                ignored += overlap.get((crowd_of_category[category], predicted_id), 0)
            if ignored / predicted_area[predicted_id] > 0.5:
                continue
            self.fp[self._index[category]] += 1
        self.num_images += 1

    def merge(self, other: "PanopticQuality") -> None:
        """Add another accumulator's counts (e.g. from another process) into this one."""
        if other.categories != self.categories:
            raise ValueError("cannot merge PanopticQuality accumulators of different categories")
        self.iou += other.iou
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.num_images += other.num_images

    def compute(self) -> dict[str, Any]:
        """Scores as fractions (panopticapi prints them x 100):

        `{"all" | "things" | "stuff": {"pq", "sq", "rq", "n"}, "per_category": {category_id: {"pq", "sq", "rq",
        "tp", "fp", "fn", "isthing"}}, "num_images"}`. `n` counts the categories averaged; a group with none has
        `None` scores. A category with no TP, FP or FN scores 0 and is left out of the averages.
        """
        denominator = self.tp + 0.5 * self.fp + 0.5 * self.fn
        seen = denominator > 0
        pq = np.divide(self.iou, denominator, out=np.zeros_like(self.iou), where=seen)
        sq = np.divide(self.iou, self.tp, out=np.zeros_like(self.iou), where=self.tp > 0)
        rq = np.divide(self.tp.astype(np.float64), denominator, out=np.zeros_like(self.iou), where=seen)
        things = np.array(list(self.categories.values()), dtype=bool)
        groups: dict[str, Any] = {}
        for name, members in (("all", np.ones_like(things)), ("things", things), ("stuff", ~things)):
            chosen = members & seen
            n = int(chosen.sum())
            groups[name] = {
                "pq": float(pq[chosen].mean()) if n else None,
                "sq": float(sq[chosen].mean()) if n else None,
                "rq": float(rq[chosen].mean()) if n else None,
                "n": n,
            }
        groups["per_category"] = {
            category: {
                "pq": float(pq[index]),
                "sq": float(sq[index]),
                "rq": float(rq[index]),
                "tp": int(self.tp[index]),
                "fp": int(self.fp[index]),
                "fn": int(self.fn[index]),
                "isthing": self.categories[category],
            }
            for category, index in self._index.items()
        }
        groups["num_images"] = self.num_images
        return groups
