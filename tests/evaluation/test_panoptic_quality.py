"""PQ / SQ / RQ with panopticapi's rules (`ita_segmentation/evaluation/panoptic_quality.py`): crafted predictions
with known scores, void and crowd regions, and agreement with torchmetrics where the two rules coincide."""

import numpy as np
import pytest
import torch

from ita_segmentation.evaluation.panoptic_quality import PanopticQuality

THING, STUFF, UNSEEN = 1, 2, 3
CATEGORIES = {THING: True, STUFF: False, UNSEEN: True}


def row(*runs):
    """A 1 x N segment-id map from (id, length) runs."""
    return np.concatenate([np.full(length, segment_id) for segment_id, length in runs])[None]


def crafted(crowd_category=THING):
    # Reference: A (thing, 10 px), B (thing, 10), S (stuff, 20), void (5), a crowd region (5).
    reference = row((1, 10), (2, 10), (3, 20), (0, 5), (4, 5))
    reference_segments = [
        {"id": 1, "category_id": THING, "iscrowd": 0},
        {"id": 2, "category_id": THING, "iscrowd": 0},
        {"id": 3, "category_id": STUFF, "iscrowd": 0},
        {"id": 4, "category_id": crowd_category, "iscrowd": 1},
    ]
    prediction = row(
        (11, 8),  # on A: IoU 8 / 10 = 0.8, a match
        (12, 5),  # 2 px of A and 3 of B: IoU with B 3 / 12, no match -> FP; B unmatched -> FN
        (0, 7),  # unassigned
        (13, 18),  # on S ...
        (14, 2),  # ... the rest of S: a second stuff segment, unmatched -> FP
        (13, 4),  # ... and 4 px on void: IoU 18 / (22 + 20 - 18 - 4) = 0.9, a match
        (15, 6),  # 1 px of void + the 5 crowd px: ignored when the crowd is of its category
    )
    prediction_segments = [
        {"id": 11, "category_id": THING},
        {"id": 12, "category_id": THING},
        {"id": 13, "category_id": STUFF},
        {"id": 14, "category_id": STUFF},
        {"id": 15, "category_id": THING},
    ]
    return prediction, prediction_segments, reference, reference_segments


def test_crafted_scores():
    metric = PanopticQuality(CATEGORIES)
    metric.add(*crafted())
    scores = metric.compute()
    thing, stuff = scores["per_category"][THING], scores["per_category"][STUFF]
    assert (thing["tp"], thing["fp"], thing["fn"]) == (1, 1, 1)
    assert (stuff["tp"], stuff["fp"], stuff["fn"]) == (1, 1, 0)
    assert thing["sq"] == pytest.approx(0.8) and thing["rq"] == pytest.approx(0.5) and thing["pq"] == pytest.approx(0.4)
    assert (
        stuff["sq"] == pytest.approx(0.9) and stuff["rq"] == pytest.approx(2 / 3) and stuff["pq"] == pytest.approx(0.6)
    )
    # The unseen category (no TP, FP or FN) is left out of the averages.
    assert scores["all"] == pytest.approx({"pq": 0.5, "sq": 0.85, "rq": (0.5 + 2 / 3) / 2, "n": 2})
    assert scores["things"] == pytest.approx({"pq": 0.4, "sq": 0.8, "rq": 0.5, "n": 1})
    assert scores["stuff"] == pytest.approx({"pq": 0.6, "sq": 0.9, "rq": 2 / 3, "n": 1})
    assert scores["num_images"] == 1


def test_crowd_of_another_category_does_not_excuse_a_false_positive():
    metric = PanopticQuality(CATEGORIES)
    metric.add(*crafted(crowd_category=STUFF))
    per_category = metric.compute()["per_category"]
    assert per_category[THING]["fp"] == 2  # segment 15: 1 / 6 on void, its crowd region is another category's
    assert per_category[STUFF]["fn"] == 0  # a crowd region is never a false negative


def test_void_in_the_union_and_void_segments_ignored():
    # A predicted segment mostly on void is no false positive; void pixels are left out of a match's union.
    reference = row((1, 4), (0, 6))
    prediction = row((7, 4), (7, 1), (8, 5))  # 7: 4 on the segment + 1 on void; 8: all on void
    metric = PanopticQuality({THING: True})
    metric.add(
        prediction,
        [{"id": 7, "category_id": THING}, {"id": 8, "category_id": THING}],
        reference,
        [{"id": 1, "category_id": THING}],
    )
    per_category = metric.compute()["per_category"][THING]
    assert (per_category["tp"], per_category["fp"], per_category["fn"]) == (1, 0, 0)
    assert per_category["sq"] == pytest.approx(1.0)  # 4 / (5 + 4 - 4 - 1)


def test_iou_of_exactly_one_half_is_no_match_and_images_accumulate():
    reference = row((1, 4))
    prediction = row((5, 2), (6, 2))  # each IoU 2 / 4 = 0.5
    metric = PanopticQuality({THING: True})
    segments = [{"id": 5, "category_id": THING}, {"id": 6, "category_id": THING}]
    metric.add(prediction, segments, reference, [{"id": 1, "category_id": THING}])
    metric.add(reference, [{"id": 1, "category_id": THING}], reference, [{"id": 1, "category_id": THING}])
    per_category = metric.compute()["per_category"][THING]
    assert (per_category["tp"], per_category["fp"], per_category["fn"]) == (1, 2, 1)
    assert per_category["pq"] == pytest.approx(1 / (1 + 1.5))
    other = PanopticQuality({THING: True})
    other.add(reference, [{"id": 1, "category_id": THING}], reference, [{"id": 1, "category_id": THING}])
    metric.merge(other)
    assert metric.compute()["per_category"][THING]["tp"] == 2 and metric.num_images == 3


def test_empty_split_and_bad_input():
    assert PanopticQuality({THING: True}).compute()["all"] == {"pq": None, "sq": None, "rq": None, "n": 0}
    metric = PanopticQuality({THING: True})
    reference = row((1, 4))
    with pytest.raises(ValueError, match="unknown category_id 9"):
        metric.add(reference, [{"id": 1, "category_id": 9}], reference, [{"id": 1, "category_id": THING}])
    with pytest.raises(ValueError, match="id 1 is in the map but not in segments_info"):
        metric.add(reference, [], reference, [{"id": 1, "category_id": THING}])
    with pytest.raises(ValueError, match=r"ids \[2\] are in segments_info but not in the map"):
        metric.add(reference, [{"id": 1, "category_id": THING}, {"id": 2, "category_id": THING}], reference, [])
    with pytest.raises(ValueError, match="one size"):
        metric.add(row((1, 3)), [{"id": 1, "category_id": THING}], reference, [])


def random_panoptic(rng, things, stuff, size=16, void=True):
    """A random panoptic map: stuff rectangles (one segment per stuff category, the first filling the map),
    thing rectangles on top, and optionally void. Returns `(ids, segments, category_instance [H, W, 2])`."""
    ids = np.zeros((size, size), dtype=np.int64)
    segments, next_id = [], 1
    for index, category in enumerate(stuff):  # the first stuff category fills the map
        top, left = rng.integers(0, size, 2) if index else (0, 0)
        ids[top:, left:] = next_id
        segments.append({"id": next_id, "category_id": category, "iscrowd": 0})
        next_id += 1
    for _ in range(rng.integers(2, 5)):
        top, left = rng.integers(0, size - 3, 2)
        height, width = rng.integers(3, 8, 2)
        ids[top : top + height, left : left + width] = next_id
        segments.append({"id": next_id, "category_id": int(rng.choice(things)), "iscrowd": 0})
        next_id += 1
    if void:
        top, left = rng.integers(0, size - 2, 2)
        ids[top : top + 3, left : left + 5] = 0
    present = set(np.unique(ids).tolist())
    segments = [segment for segment in segments if segment["id"] in present]
    category_of = {segment["id"]: segment["category_id"] for segment in segments}
    pairs = np.stack([np.vectorize(lambda i: category_of.get(i, -1))(ids), ids], axis=-1)
    return ids, segments, pairs


def test_agrees_with_torchmetrics_where_the_rules_coincide():
    """No crowd, and predictions that assign every pixel: there torchmetrics' PanopticQuality applies
    panopticapi's rules, and the scores agree."""
    from torchmetrics.detection import PanopticQuality as TorchmetricsPanopticQuality

    rng = np.random.default_rng(0)
    things, stuff = [1, 2], [3, 4]
    ours = PanopticQuality({1: True, 2: True, 3: False, 4: False})
    theirs = TorchmetricsPanopticQuality(things=set(things), stuffs=set(stuff), return_sq_and_rq=True)
    for _ in range(12):
        true_ids, true_segments, true_pairs = random_panoptic(rng, things, stuff)
        # A prediction: the truth with some segments moved, merged or relabelled, every pixel assigned.
        predicted_ids, predicted_segments, predicted_pairs = random_panoptic(rng, things, stuff, void=False)
        if rng.random() < 0.5:
            predicted_ids = np.where(rng.random(true_ids.shape) < 0.9, true_ids, predicted_ids + 100)
            predicted_ids[predicted_ids == 0] = 999
            category_of = {s["id"]: s["category_id"] for s in true_segments}
            category_of.update({s["id"] + 100: s["category_id"] for s in predicted_segments})
            category_of[999] = stuff[0]
            present = np.unique(predicted_ids).tolist()
            # One segment per stuff category, as torchmetrics merges them: relabel extra stuff segments as a thing.
            seen_stuff = set()
            for segment_id in present:
                if category_of[segment_id] in stuff:
                    if category_of[segment_id] in seen_stuff:
                        category_of[segment_id] = things[0]
                    seen_stuff.add(category_of[segment_id])
            predicted_segments = [{"id": i, "category_id": category_of[i]} for i in present]
            predicted_pairs = np.stack([np.vectorize(category_of.get)(predicted_ids), predicted_ids], axis=-1)
        ours.add(predicted_ids, predicted_segments, true_ids, true_segments)
        theirs.update(torch.from_numpy(predicted_pairs)[None], torch.from_numpy(true_pairs)[None])
    pq, sq, rq = theirs.compute().tolist()
    scores = ours.compute()["all"]
    assert scores["n"] == 4
    assert (scores["pq"], scores["sq"], scores["rq"]) == pytest.approx((pq, sq, rq), abs=1e-6)


def test_torchmetrics_differs_on_crowd_and_predicted_void():
    """The documented gap: torchmetrics does not know crowd regions and forgives a false negative that lies
    on predicted void; panopticapi's rules (ours) count both."""
    from torchmetrics.detection import PanopticQuality as TorchmetricsPanopticQuality

    reference = row((1, 10), (2, 10))
    prediction = row((0, 10), (5, 10))  # segment 1 left unassigned; 5 matches 2
    ours = PanopticQuality({THING: True})
    ours.add(
        prediction,
        [{"id": 5, "category_id": THING}],
        reference,
        [{"id": 1, "category_id": THING}, {"id": 2, "category_id": THING}],
    )
    theirs = TorchmetricsPanopticQuality(things={THING}, stuffs={STUFF}, allow_unknown_preds_category=True)
    to_pairs = lambda ids, category: np.stack([np.where(ids > 0, category, -1), ids], axis=-1)
    theirs.update(
        torch.from_numpy(to_pairs(prediction, THING))[None], torch.from_numpy(to_pairs(reference, THING))[None]
    )
    assert ours.compute()["all"]["pq"] == pytest.approx(1 / 1.5)  # one TP, one FN
    assert float(theirs.compute()) == pytest.approx(1.0)  # the FN on predicted void is not counted


def test_reference_areas_from_the_annotations():
    """ADE20K panoptic's stuff segments keep their full `area` in the JSON although things cover part of them in
    the PNG; panopticapi's union uses the JSON area."""
    reference = row((1, 50), (2, 30))  # stuff 1 has 80 px in the JSON, 50 left in the PNG
    prediction = row((5, 50), (6, 30))
    true_segments = [{"id": 1, "category_id": STUFF, "area": 80}, {"id": 2, "category_id": THING, "area": 30}]
    predicted_segments = [{"id": 5, "category_id": STUFF}, {"id": 6, "category_id": THING}]
    metric = PanopticQuality(CATEGORIES)
    metric.add(prediction, predicted_segments, reference, true_segments)
    assert metric.compute()["per_category"][STUFF]["sq"] == pytest.approx(50 / 80)
    without_area = PanopticQuality(CATEGORIES)
    without_area.add(
        prediction, predicted_segments, reference, [{k: v for k, v in s.items() if k != "area"} for s in true_segments]
    )
    assert without_area.compute()["per_category"][STUFF]["sq"] == pytest.approx(1.0)
