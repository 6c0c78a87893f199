"""Panoptic and instance post-processing (`postprocessing_ita.py` and the image processor's methods):
against a plain re-statement of FC-CLIP's `panoptic_inference` / `instance_inference`, on crafted logits with
known answers, and batch = single."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from image_processing_ita import ITAImageProcessor
from postprocessing_ita import binary_mask_to_coco_rle, instance_segments, panoptic_segments

# ----------------------------------------------------------------------------------------------------------
# FC-CLIP's rules, re-stated plainly on full tensors (the reference)
# ----------------------------------------------------------------------------------------------------------


def reference_masks(mask_logits, image_size, target_size, divisor=32):
    """FC-CLIP's mask logits at the output size for one image run alone: upsample to the padded frame, crop,
    resize (`sem_seg_postprocess`)."""
    height, width = image_size
    frame = (math.ceil(height / divisor) * divisor, math.ceil(width / divisor) * divisor)
    grid = mask_logits[:, : frame[0] // 4, : frame[1] // 4]
    upsampled = F.interpolate(grid[None].float(), size=frame, mode="bilinear", align_corners=False)
    cropped = upsampled[:, :, :height, :width]
    return F.interpolate(cropped, size=tuple(target_size), mode="bilinear", align_corners=False)[0]


def reference_panoptic(log_probs, mask_logits, stuff, object_mask_threshold=0.8, overlap_threshold=0.8):
    """FC-CLIP's `panoptic_inference`: returns (map, [(id, class, isthing)])."""
    probs = log_probs.softmax(-1)
    scores, labels = probs.max(-1)
    void = log_probs.shape[-1] - 1
    keep = (labels != void) & (scores > object_mask_threshold)
    scores, labels, masks = scores[keep], labels[keep], mask_logits[keep].sigmoid()
    panoptic = torch.zeros(mask_logits.shape[-2:], dtype=torch.int32)
    segments = []
    if len(labels) == 0:
        return panoptic, segments
    owner = (scores[:, None, None] * masks).argmax(0)
    stuff_ids, next_id = {}, 0
    for k in range(len(labels)):
        label = int(labels[k])
        won = int((owner == k).sum())
        own = int((masks[k] >= 0.5).sum())
        pixels = (owner == k) & (masks[k] >= 0.5)
        if won == 0 or own == 0 or int(pixels.sum()) == 0:
            continue
        if won / own < overlap_threshold:
            continue
        if label in stuff:
            if label in stuff_ids:
                panoptic[pixels] = stuff_ids[label]
                continue
            stuff_ids[label] = next_id + 1
        next_id += 1
        panoptic[pixels] = next_id
        segments.append((next_id, label, label not in stuff))
    return panoptic, segments


def reference_instances(log_probs, mask_logits, stuff, top_k=100):
    """FC-CLIP's `instance_inference`: returns a list of (class, score, mask) in no particular order."""
    class_probs = log_probs.softmax(-1)[:, :-1]
    num_classes = class_probs.shape[-1]
    top, indices = class_probs.flatten().topk(min(top_k, class_probs.numel()))
    instances = []
    for score, index in zip(top.tolist(), indices.tolist()):
        query, label = divmod(index, num_classes)
        if label in stuff:
            continue
        mask = mask_logits[query] > 0
        mean = float((mask_logits[query].sigmoid() * mask).sum() / (mask.sum() + 1e-6))
        instances.append((label, score * mean, mask))
    return instances


def random_outputs(batch, num_queries, num_classes, grid, image_sizes, seed=0):
    """Random outputs shaped like a model's: half the queries sure of one class, the others unsure; each
    query's mask a random region of the grid (the cells nearest to a random centre) with noise, so that
    segments form, overlap at their borders and some queries lose too much of their mask to the others."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, num_queries, num_classes + 1, generator=generator) * 2
    for query in range(num_queries // 2):
        logits[:, query, query % num_classes] += 8
    rows, columns = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    centres = torch.rand(batch, num_queries, 2, generator=generator) * torch.tensor(grid)
    distance = (rows - centres[..., :1, None]) ** 2 + (columns - centres[..., 1:, None]) ** 2  # [B, Q, h, w]
    nearest = distance.argmin(1, keepdim=True) == torch.arange(num_queries).view(1, -1, 1, 1)
    masks = torch.where(nearest, 5.0, -5.0) + torch.randn(batch, num_queries, *grid, generator=generator) * 2
    return {
        "class_queries_logits": logits.log_softmax(-1),
        "masks_queries_logits": masks,
        "image_sizes": torch.tensor(image_sizes),
    }


# ----------------------------------------------------------------------------------------------------------
# The processor against the reference
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("stuff", [set(), {0, 2}])
def test_panoptic_matches_fcclip(seed, stuff):
    outputs = random_outputs(1, 10, 4, (16, 16), [(45, 60)], seed=seed)
    target = (50, 70)
    processor = ITAImageProcessor()
    processor.post_process_chunk_elements = 5000  # several queries per chunk, several chunks
    result = processor.post_process_panoptic_segmentation(outputs, label_ids_to_fuse=stuff, target_sizes=[target])[0]
    masks = reference_masks(outputs["masks_queries_logits"][0], (45, 60), target)
    expected_map, expected_segments = reference_panoptic(outputs["class_queries_logits"][0], masks, stuff)
    assert expected_segments, "the case should produce segments"
    assert torch.equal(result["segmentation"], expected_map)
    got = [(info["id"], info["label_id"], not info["was_fused"]) for info in result["segments_info"]]
    assert got == expected_segments
    assert set(torch.unique(result["segmentation"]).tolist()) <= {0} | {info["id"] for info in result["segments_info"]}


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("stuff", [set(), {1}])
def test_instances_match_fcclip(seed, stuff):
    outputs = random_outputs(1, 8, 5, (16, 16), [(45, 60)], seed=seed)
    target = (50, 70)
    processor = ITAImageProcessor()
    processor.post_process_chunk_elements = 5000
    result = processor.post_process_instance_segmentation(
        outputs, target_sizes=[target], return_binary_maps=True, top_k=12, label_ids_to_fuse=stuff
    )[0]
    masks = reference_masks(outputs["masks_queries_logits"][0], (45, 60), target)
    expected = [
        item for item in reference_instances(outputs["class_queries_logits"][0], masks, stuff, 12) if item[2].any()
    ]
    assert len(result["segments_info"]) == len(expected) > 0
    scores = [info["score"] for info in result["segments_info"]]
    assert scores == sorted(scores, reverse=True)
    assert [info["id"] for info in result["segments_info"]] == list(range(len(scores)))
    expected = sorted(expected, key=lambda item: -item[1])
    for info, mask, (label, score, expected_mask) in zip(result["segments_info"], result["segmentation"], expected):
        assert info["label_id"] == label and info["label_id"] not in stuff
        assert info["score"] == pytest.approx(score, rel=1e-5)
        assert torch.equal(mask, expected_mask)


def test_batch_equals_single():
    """A small image batched with a larger one: its own frame only is read (garbage beyond it changes nothing)."""
    processor = ITAImageProcessor()
    small, large = (40, 50), (90, 120)  # frames 64x64 and 96x128 -> mask grids 16x16 and 24x32
    batch = random_outputs(2, 10, 4, (24, 32), [small, large], seed=3)
    alone = {
        "class_queries_logits": batch["class_queries_logits"][:1],
        "masks_queries_logits": batch["masks_queries_logits"][:1, :, :16, :16].clone(),
        "image_sizes": batch["image_sizes"][:1],
    }
    batch["masks_queries_logits"][0, :, 16:, :] = 50.0  # beyond the small image's own frame
    batch["masks_queries_logits"][0, :, :, 16:] = -50.0
    targets = [(37, 61), (90, 120)]
    for method, kwargs in (
        ("post_process_panoptic_segmentation", {"label_ids_to_fuse": {1}}),
        ("post_process_instance_segmentation", {"return_binary_maps": True}),
    ):
        batched = getattr(processor, method)(batch, target_sizes=targets, **kwargs)
        single = getattr(processor, method)(alone, target_sizes=targets[:1], **kwargs)[0]
        assert torch.equal(batched[0]["segmentation"], single["segmentation"])
        assert batched[0]["segments_info"] == single["segments_info"]
        assert single["segments_info"]
        assert tuple(batched[1]["segmentation"].shape[-2:]) == (90, 120)


# ----------------------------------------------------------------------------------------------------------
# The rules on crafted logits with known answers
# ----------------------------------------------------------------------------------------------------------

H, W = 10, 20
STRONG = 20.0


def class_log_probs(rows):
    """`rows` = list of (class, probability) per query over 3 classes + void: the rest spread evenly."""
    table = []
    for label, probability in rows:
        rest = (1.0 - probability) / 3
        row = [rest] * 4
        row[label] = probability
        table.append(row)
    return torch.tensor(table, dtype=torch.float64).log().float()


def region(top, bottom, left, right, inside=STRONG, outside=-STRONG):
    logits = torch.full((H, W), outside)
    logits[top:bottom, left:right] = inside
    return logits


def chunks_of(mask_logits, chunk=2):
    def mask_chunks_for(queries):
        for start in range(0, len(queries), chunk):
            positions = slice(start, min(start + chunk, len(queries)))
            yield positions, mask_logits[queries[positions]]

    return mask_chunks_for


def panoptic(rows, masks, stuff=(), threshold=0.8, overlap=0.8):
    return panoptic_segments(
        class_log_probs(rows), chunks_of(torch.stack(masks)), (H, W), threshold, 0.5, overlap, set(stuff)
    )


def test_two_things_and_an_unassigned_corner():
    segmentation, info = panoptic([(0, 0.95), (1, 0.9)], [region(0, 10, 0, 8), region(0, 10, 8, 16)])
    assert [(s["id"], s["label_id"], s["was_fused"]) for s in info] == [(1, 0, False), (2, 1, False)]
    assert info[0]["score"] == pytest.approx(0.95) and info[1]["score"] == pytest.approx(0.9)
    assert (segmentation[:, :8] == 1).all() and (segmentation[:, 8:16] == 2).all()
    assert (segmentation[:, 16:] == 0).all()  # no mask covers these columns: no segment
    assert segmentation.dtype == torch.int32


def test_stuff_queries_merge_into_one_segment_things_do_not():
    rows = [(2, 0.9), (0, 0.95), (2, 0.85), (0, 0.9)]  # two sky queries, two person queries
    masks = [region(0, 5, 0, 10), region(5, 10, 0, 10), region(0, 5, 10, 20), region(5, 10, 10, 20)]
    segmentation, info = panoptic(rows, masks, stuff={2})
    assert [(s["id"], s["label_id"], s["was_fused"]) for s in info] == [(1, 2, True), (2, 0, False), (3, 0, False)]
    assert info[0]["score"] == pytest.approx(0.9)  # the highest of the merged queries
    assert (segmentation[:5] == 1).all()  # both sky halves: one segment
    assert (segmentation[5:, :10] == 2).all() and (segmentation[5:, 10:] == 3).all()
    # Without stuff classes, the same queries are four segments.
    _, info = panoptic(rows, masks)
    assert [s["id"] for s in info] == [1, 2, 3, 4] and not any(s["was_fused"] for s in info)


def test_object_mask_threshold_and_void_drop_queries():
    masks = [region(0, 10, 0, 10), region(0, 10, 10, 20), region(0, 5, 0, 20)]
    # 0.8 exactly is not above the threshold; a void winner is dropped whatever its mask.
    void_row = (3, 0.99)
    segmentation, info = panoptic([(0, 0.8), (1, 0.81), void_row], masks)
    assert [s["label_id"] for s in info] == [1]
    assert (segmentation[:, :10] == 0).all() and (segmentation[:, 10:] == 1).all()
    segmentation, info = panoptic([(0, 0.8), (1, 0.81), void_row], masks, threshold=0.5)
    assert [s["label_id"] for s in info] == [0, 1]


def test_overlap_threshold_drops_a_query_that_keeps_too_little_of_its_mask():
    # Query 1 (score 0.9) covers 10 columns; query 0 (0.95) takes `taken` of them.
    for taken, kept in ((2, True), (3, False)):  # 8/10 = 0.8 kept (>=), 7/10 dropped
        masks = [region(0, 10, 0, taken), region(0, 10, 0, 10)]
        segmentation, info = panoptic([(0, 0.95), (1, 0.9)], masks)
        assert (1 in [s["label_id"] for s in info]) == kept
        if not kept:  # its pixels stay unassigned, not given to anyone else
            assert (segmentation[:, taken:10] == 0).all()


def test_pixels_won_without_a_confident_mask_stay_unassigned():
    weak = torch.full((H, W), -1.0)  # probability 0.27 everywhere: wins where nothing else is, covers nothing
    segmentation, info = panoptic([(0, 0.95), (1, 0.99)], [region(0, 10, 0, 10), weak])
    assert [s["label_id"] for s in info] == [0]
    assert (segmentation[:, 10:] == 0).all()


def test_empty_results():
    # Every query is void: nothing kept.
    segmentation, info = panoptic([(3, 0.9), (3, 0.99)], [region(0, 10, 0, 10), region(0, 10, 10, 20)])
    assert info == [] and (segmentation == 0).all()
    # Kept queries whose masks cover nothing.
    segmentation, info = panoptic([(0, 0.9)], [torch.full((H, W), -STRONG)])
    assert info == [] and (segmentation == 0).all()
    # Instances: all masks empty.
    masks, info = instance_segments(
        class_log_probs([(0, 0.9)]), chunks_of(torch.full((1, H, W), -STRONG)), (H, W), 100, 0.0, 0.5, set()
    )
    assert info == [] and tuple(masks.shape) == (0, H, W)


def test_instance_scores_top_k_and_stuff():
    rows = [(0, 0.9), (1, 0.6)]
    mask_logits = torch.stack([region(0, 10, 0, 5, inside=2.0), region(0, 10, 5, 20, inside=0.0001)])
    log_probs = class_log_probs(rows)
    masks, info = instance_segments(log_probs, chunks_of(mask_logits), (H, W), 3, 0.0, 0.5, set())
    # The 3 best (query, class) pairs: (0, class 0) 0.9, (1, class 1) 0.6, then the rest of 0.1/3 or 0.4/3.
    assert [(s["label_id"], s["id"]) for s in info][:2] == [(0, 0), (1, 1)]
    assert info[0]["score"] == pytest.approx(0.9 * torch.sigmoid(torch.tensor(2.0)).item(), rel=1e-5)
    assert info[1]["score"] == pytest.approx(0.6 * 0.5, rel=1e-3)
    assert masks[0][:, :5].all() and not masks[0][:, 5:].any()
    # Third: query 1's next class (class 0 before class 2 on the tie), with query 1's mask.
    assert len(info) == 3 and info[2]["label_id"] == 0 and info[2]["score"] == pytest.approx(0.4 / 3 * 0.5, rel=1e-3)
    assert torch.equal(masks[2], masks[1])
    # Stuff classes are dropped after the top-k; a threshold drops low scores.
    _, info = instance_segments(log_probs, chunks_of(mask_logits), (H, W), 3, 0.0, 0.5, {0})
    assert [s["label_id"] for s in info][0] == 1 and 0 not in [s["label_id"] for s in info]
    _, info = instance_segments(log_probs, chunks_of(mask_logits), (H, W), 3, 0.5, 0.5, set())
    assert [s["label_id"] for s in info] == [0]


def test_instance_map_rle_and_binary_maps_agree():
    processor = ITAImageProcessor()
    outputs = random_outputs(1, 6, 3, (8, 8), [(32, 32)], seed=1)
    maps = processor.post_process_instance_segmentation(outputs, return_binary_maps=True, top_k=10)[0]
    rle = processor.post_process_instance_segmentation(outputs, return_coco_annotation=True, top_k=10)[0]
    plain = processor.post_process_instance_segmentation(outputs, top_k=10)[0]
    assert maps["segments_info"] == rle["segments_info"] == plain["segments_info"]
    assert len(rle["segmentation"]) == len(maps["segmentation"]) > 0
    for encoded, mask in zip(rle["segmentation"], maps["segmentation"]):
        assert encoded["size"] == [32, 32]
        assert sum(encoded["counts"]) == 32 * 32
        assert torch.equal(decode_rle(encoded), mask)
    # The plain map shows, at each pixel, the highest-scoring instance covering it (-1: none).
    covering = maps["segmentation"]
    expected = torch.where(covering.any(0), covering.float().argmax(0), torch.tensor(-1))
    assert torch.equal(plain["segmentation"], expected)


def decode_rle(encoded):
    height, width = encoded["size"]
    values, value = [], 0
    for count in encoded["counts"]:
        values += [value] * count
        value = 1 - value
    return torch.tensor(values, dtype=torch.bool).view(width, height).t()


def test_coco_rle_of_known_masks():
    mask = torch.tensor([[0, 1], [1, 1]], dtype=torch.bool)  # column-major: 0 1 1 1
    assert binary_mask_to_coco_rle(mask) == {"size": [2, 2], "counts": [1, 3]}
    assert binary_mask_to_coco_rle(torch.ones(2, 3, dtype=torch.bool))["counts"] == [0, 6]
    assert binary_mask_to_coco_rle(torch.zeros(2, 3, dtype=torch.bool))["counts"] == [6]
    pycocotools = pytest.importorskip("pycocotools.mask")
    random = torch.from_numpy(np.random.default_rng(0).random((7, 9)) > 0.5)
    encoded = binary_mask_to_coco_rle(random)
    compressed = pycocotools.frPyObjects(encoded, *encoded["size"])
    assert np.array_equal(pycocotools.decode(compressed).astype(bool), random.numpy())


@pytest.mark.parametrize(
    "method, kwargs, message",
    [
        ("post_process_panoptic_segmentation", {"label_ids_to_fuse": {7}}, "outside the vocabulary of 4"),
        ("post_process_panoptic_segmentation", {"threshold": 1.5}, "threshold must lie"),
        ("post_process_panoptic_segmentation", {"mask_threshold": 0.0}, "mask_threshold"),
        ("post_process_panoptic_segmentation", {"target_sizes": [(5, 5), (5, 5)]}, "2 target_sizes for a batch of 1"),
        ("post_process_instance_segmentation", {"return_binary_maps": True, "return_coco_annotation": True}, "both"),
        ("post_process_instance_segmentation", {"top_k": 0}, "top_k"),
    ],
)
def test_bad_arguments_are_named(method, kwargs, message):
    outputs = random_outputs(1, 4, 4, (8, 8), [(32, 32)])
    with pytest.raises(ValueError, match=message):
        getattr(ITAImageProcessor(), method)(outputs, **kwargs)


def test_bad_outputs_are_named():
    processor = ITAImageProcessor()
    outputs = random_outputs(1, 4, 4, (8, 8), [(64, 64)])
    with pytest.raises(ValueError, match="Image 0 of size \\(64, 64\\) needs a 16x16 mask grid"):
        processor.post_process_panoptic_segmentation(outputs)
    with pytest.raises(ValueError, match="image_sizes"):
        processor.post_process_instance_segmentation({**outputs, "image_sizes": None})


def test_ensemble_log_probs_field_is_preferred():
    """`ensemble_log_probs`, where outputs have it, is what the rules read (not the decoder's logits)."""
    outputs = random_outputs(1, 6, 3, (8, 8), [(32, 32)], seed=2)
    expected = ITAImageProcessor().post_process_panoptic_segmentation(outputs, threshold=0.5)[0]
    renamed = {
        **outputs,
        "ensemble_log_probs": outputs["class_queries_logits"],
        "class_queries_logits": torch.zeros_like(outputs["class_queries_logits"]),
    }
    result = ITAImageProcessor().post_process_panoptic_segmentation(renamed, threshold=0.5)[0]
    assert expected["segments_info"] and result["segments_info"] == expected["segments_info"]
    assert torch.equal(result["segmentation"], expected["segmentation"])


# ----------------------------------------------------------------------------------------------------------
# target_sizes given as (width, height)
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method",
    ["post_process_semantic_segmentation", "post_process_panoptic_segmentation", "post_process_instance_segmentation"],
)
def test_a_swapped_target_size_is_refused_naming_height_width(method):
    processor = ITAImageProcessor()
    outputs = random_outputs(1, 6, 3, (16, 24), [[64, 96]])  # resized from a 480 x 720 (height x width) photo
    with pytest.raises(
        ValueError, match=r"target_sizes\[0\] is \(720, 480\).*looks like \(width, height\).*\(480, 720\)"
    ):
        getattr(processor, method)(outputs, target_sizes=[(720, 480)])
    # the right order, a deliberate stretch to another shape and a square target all pass
    for target in [(480, 720), (481, 719), (100, 100), (300, 900)]:
        result = getattr(processor, method)(outputs, target_sizes=[target])[0]
        segmentation = result if isinstance(result, torch.Tensor) else result["segmentation"]
        assert tuple(segmentation.shape[-2:]) == target


def test_target_sizes_are_not_checked_when_the_processor_does_not_keep_the_aspect_ratio():
    processor = ITAImageProcessor(size={"height": 64, "width": 96})  # a fixed resize: image_sizes tell nothing
    outputs = random_outputs(1, 6, 3, (16, 24), [[64, 96]])
    label_map = processor.post_process_semantic_segmentation(outputs, target_sizes=[(720, 480)])[0]
    assert tuple(label_map.shape) == (720, 480)


def test_a_swap_is_told_for_an_image_of_extreme_aspect_ratio_too():
    processor = ITAImageProcessor()
    # 40000 x 10 resized to 1333 x 1 (its short side kept at one pixel)
    outputs = random_outputs(1, 6, 3, (8, 336), [[1, 1333]])
    label_map = processor.post_process_semantic_segmentation(outputs, target_sizes=[(10, 40000)])[0]
    assert tuple(label_map.shape) == (10, 40000)
    with pytest.raises(ValueError, match=r"looks like \(width, height\)"):
        processor.post_process_semantic_segmentation(outputs, target_sizes=[(40000, 10)])


@pytest.mark.parametrize("field", ["class_queries_logits", "masks_queries_logits"])
def test_outputs_with_nan_are_refused_naming_the_precision(field):
    """A model overflowing in float16 gave NaN class scores, which died deep in the resize (`max(): Expected
    reduction dim 1 to have non-zero size`); the outputs are checked first."""
    processor = ITAImageProcessor()
    outputs = random_outputs(1, 6, 3, (16, 24), [[64, 96]])
    outputs[field] = outputs[field].clone()
    outputs[field][0, 0, 0] = float("nan")
    for method in ("post_process_semantic_segmentation", "post_process_panoptic_segmentation"):
        with pytest.raises(ValueError, match=r"NaN or infinite values.*bfloat16 or float32"):
            getattr(processor, method)(outputs)
