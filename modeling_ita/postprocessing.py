"""Panoptic and instance segmentation from the model's per-query outputs, by FC-CLIP's inference rules.

`ITAImageProcessor.post_process_panoptic_segmentation` and `post_process_instance_segmentation` call these
functions (imported inside the methods: `modeling_ita` imports the image processor when it registers the Auto
classes). They work on one image at a time:

- `query_mask_logits` yields the mask logits of chosen queries at the output size, as FC-CLIP's
  `sem_seg_postprocess` makes them (bilinear upsampling to the image's padded frame, padding cropped, bilinear
  resize to the output size), a few queries at a time so that memory stays bounded;
- `panoptic_segments` is FC-CLIP's `panoptic_inference`: each kept query claims the pixels where its
  score-weighted mask wins and is confident, unless too little of its own mask survives; queries of a stuff
  class merge into one segment;
- `instance_segments` is FC-CLIP's `instance_inference`: the top-k (query, class) pairs, each scored by its
  class probability times its mean mask probability inside its mask.

Class probabilities are the softmax of the ensemble's log-probabilities (`ensemble_log_probs`), void last.
"""

import math

import torch
import torch.nn.functional as F

__all__ = [
    "query_mask_logits",
    "panoptic_segments",
    "instance_segments",
    "binary_mask_to_coco_rle",
]


def query_mask_logits(mask_logits, queries, image_size, target_size, size_divisor, mask_stride, max_elements):
    """Yield `(positions, logits)` for the queries `queries` (indices into `mask_logits` `[Q, h, w]`) at the
    target size: `positions` is a slice of `queries`, `logits` its `[n, H_t, W_t]` float32 mask logits.

    As FC-CLIP's `sem_seg_postprocess`: the image's own padded frame (its size rounded up to `size_divisor`,
    `mask_stride` times the mask grid) is upsampled bilinearly (align_corners=False) from the mask grid, the
    padding is cropped, and the result is resized bilinearly to the target size. Logits beyond the image's own
    frame are never read, so an image gets the same result alone or in a batch with larger images. Queries are
    resized `n` at a time, with `n` chosen so that the frame-sized intermediate holds at most about
    `max_elements` values; each query's resize is independent of the others, so the values are those of
    resizing all queries at once.
    """
    height, width = image_size
    target_height, target_width = target_size
    frame_height = math.ceil(height / size_divisor) * size_divisor
    frame_width = math.ceil(width / size_divisor) * size_divisor
    grid_height, grid_width = frame_height // mask_stride, frame_width // mask_stride
    if grid_height > mask_logits.shape[-2] or grid_width > mask_logits.shape[-1]:
        raise ValueError(
            f"an image of size {tuple(image_size)} needs a {grid_height}x{grid_width} mask grid (stride {mask_stride} "
            f"of its {frame_height}x{frame_width} padded frame) but masks_queries_logits is "
            f"{mask_logits.shape[-2]}x{mask_logits.shape[-1]}"
        )
    per_query = frame_height * frame_width + target_height * target_width
    chunk = max(1, int(max_elements // per_query))
    grid = mask_logits[:, :grid_height, :grid_width]
    for start in range(0, len(queries), chunk):
        positions = slice(start, min(start + chunk, len(queries)))
        logits = grid[queries[positions]].float().unsqueeze(0)  # [1, n, grid rows, grid columns]
        logits = F.interpolate(logits, size=(frame_height, frame_width), mode="bilinear", align_corners=False)
        logits = logits[..., :height, :width]
        if (target_height, target_width) != (height, width):
            logits = F.interpolate(logits, size=(target_height, target_width), mode="bilinear", align_corners=False)
        yield positions, logits[0]  # [n, H_t, W_t]


def panoptic_segments(
    log_probs, mask_chunks_for, target_size, threshold, mask_threshold, overlap_mask_area_threshold, stuff_ids
):
    """FC-CLIP's `panoptic_inference` for one image.

    Args:
        log_probs: `[Q, K + 1]` ensemble log-probabilities, void last.
        mask_chunks_for: called with a `[N]` tensor of query indices, yields `(positions, logits [n, H, W])` as
            `query_mask_logits` does.
        target_size: `(H, W)` of the output.
        threshold: a query is kept when its best class is not void and its probability exceeds this.
        mask_threshold: a mask covers a pixel where its probability is at least this.
        overlap_mask_area_threshold: a kept query becomes (part of) a segment only when the pixels it wins
            number at least this fraction of the pixels its own mask covers.
        stuff_ids: set of class ids whose queries merge into one segment per class.

    Returns:
        `(segmentation [H, W] int32, segments_info)`: 0 where no segment, segment ids from 1 in the order their
        first query comes; one `segments_info` entry per segment.
    """
    height, width = target_size
    probs = log_probs.float().softmax(dim=-1)
    num_classes = probs.shape[-1] - 1
    scores, labels = probs.max(dim=-1)
    kept = torch.nonzero(labels.ne(num_classes) & (scores > threshold)).flatten()
    segmentation = torch.zeros((height, width), dtype=torch.int32, device=log_probs.device)
    if len(kept) == 0:
        return segmentation, []
    kept_scores = scores[kept]

    # Argmax over the kept queries of score x mask probability, accumulated a few queries at a time: a query
    # replaces the current winner only when strictly larger, so ties go to the first query, as argmax does.
    best = torch.full((height, width), -1.0, device=segmentation.device)
    winner = torch.zeros((height, width), dtype=torch.long, device=segmentation.device)
    confident = torch.zeros((height, width), dtype=torch.bool, device=segmentation.device)  # winner's mask >= t
    original_area = torch.zeros(len(kept), dtype=torch.long)
    for positions, logits in mask_chunks_for(kept):
        mask_probs = logits.sigmoid()  # [n, H, W]
        covers = mask_probs >= mask_threshold
        original_area[positions] = covers.flatten(1).sum(dim=1).cpu()
        weighted = kept_scores[positions].view(-1, 1, 1) * mask_probs
        chunk_best, chunk_winner = weighted.max(dim=0)  # first maximum within the chunk
        wins = chunk_best > best
        best = torch.where(wins, chunk_best, best)
        winner = torch.where(wins, chunk_winner + positions.start, winner)
        confident = torch.where(wins, covers.gather(0, chunk_winner[None])[0], confident)
    won_area = torch.bincount(winner.flatten().cpu(), minlength=len(kept))
    final_area = torch.bincount(winner[confident].cpu(), minlength=len(kept))

    segment_of_query = torch.zeros(len(kept), dtype=torch.int32)
    segments_info, stuff_segment, next_id = [], {}, 0
    for k in range(len(kept)):
        if won_area[k] == 0 or original_area[k] == 0 or final_area[k] == 0:
            continue
        if won_area[k] / original_area[k] < overlap_mask_area_threshold:
            continue
        label, score = int(labels[kept[k]]), float(kept_scores[k])
        is_stuff = label in stuff_ids
        if is_stuff and label in stuff_segment:
            info = stuff_segment[label]
            info["score"] = max(info["score"], score)
            segment_of_query[k] = info["id"]
            continue
        next_id += 1
        info = {"id": next_id, "label_id": label, "was_fused": is_stuff, "score": score}
        segments_info.append(info)
        if is_stuff:
            stuff_segment[label] = info
        segment_of_query[k] = next_id
    ids = segment_of_query.to(segmentation.device)[winner]
    segmentation = torch.where(confident, ids, segmentation)
    return segmentation, segments_info


def instance_segments(log_probs, mask_chunks_for, target_size, top_k, threshold, mask_threshold, stuff_ids):
    """FC-CLIP's `instance_inference` for one image.

    Args:
        log_probs: `[Q, K + 1]` ensemble log-probabilities, void last.
        mask_chunks_for: as in `panoptic_segments`.
        target_size: `(H, W)` of the output.
        top_k: the `top_k` highest class probabilities over all (query, class) pairs are candidates (FC-CLIP's
            `TEST.DETECTIONS_PER_IMAGE`, 100).
        threshold: instances scoring below it are dropped (FC-CLIP keeps all: 0).
        mask_threshold: a query's mask covers the pixels where its probability exceeds this (FC-CLIP: 0.5, i.e.
            logit > 0).
        stuff_ids: candidates of these classes are dropped after the top-k (FC-CLIP keeps only thing classes
            when panoptic inference is on).

    Returns:
        `(masks [N, H, W] bool, segments_info)`, highest score first (ties keep the top-k order); each entry has
        `id` (its index), `label_id`, `was_fused` (False) and `score` = class probability x the mean mask
        probability over the mask's pixels. Candidates with an empty mask are dropped.
    """
    height, width = target_size
    class_probs = log_probs.float().softmax(dim=-1)[:, :-1]  # [Q, K]
    num_classes = class_probs.shape[-1]
    flat = class_probs.flatten()
    # A stable descending sort: among equal probabilities the lower (query, class) index comes first.
    order = torch.sort(flat, descending=True, stable=True).indices[: min(top_k, flat.numel())]
    class_scores, labels, queries = flat[order], order % num_classes, order // num_classes
    if stuff_ids:
        thing = torch.tensor([int(label) not in stuff_ids for label in labels.tolist()], dtype=torch.bool)
        class_scores, labels, queries = class_scores[thing], labels[thing], queries[thing]

    unique_queries, slot = torch.unique(queries, return_inverse=True)
    query_masks = torch.zeros((len(unique_queries), height, width), dtype=torch.bool, device=log_probs.device)
    mask_scores = torch.zeros(len(unique_queries))
    # sigmoid(x) > t  <=>  x > log(t / (1 - t)): for t = 0.5, FC-CLIP's `logits > 0` exactly.
    logit_threshold = math.log(mask_threshold / (1.0 - mask_threshold))
    for positions, logits in mask_chunks_for(unique_queries.to(log_probs.device)):
        covers = logits > logit_threshold
        query_masks[positions] = covers
        inside = (logits.sigmoid() * covers).flatten(1).sum(dim=1)
        mask_scores[positions] = (inside / (covers.flatten(1).sum(dim=1) + 1e-6)).cpu()
    scores = class_scores.cpu() * mask_scores[slot]
    non_empty = query_masks.flatten(1).any(dim=1).cpu()[slot]
    keep = non_empty & (scores >= threshold)
    scores, labels, slot = scores[keep], labels[keep].cpu(), slot[keep]
    ranking = torch.sort(scores, descending=True, stable=True).indices
    masks = query_masks[slot[ranking].to(query_masks.device)]
    segments_info = [
        {"id": index, "label_id": int(labels[position]), "was_fused": False, "score": float(scores[position])}
        for index, position in enumerate(ranking.tolist())
    ]
    return masks, segments_info


def binary_mask_to_coco_rle(mask):
    """COCO's uncompressed run-length encoding of a `[H, W]` binary mask: `{"size": [H, W], "counts": [...]}`,
    runs over the column-major pixel order, starting with a (possibly empty) run of zeros, as
    `pycocotools.mask.frPyObjects` reads it."""
    mask = torch.as_tensor(mask).bool()
    height, width = mask.shape
    pixels = mask.t().flatten().to(torch.int8)
    changes = torch.nonzero(pixels[1:] != pixels[:-1]).flatten() + 1
    bounds = torch.cat([torch.tensor([0]), changes.cpu(), torch.tensor([pixels.numel()])])
    counts = (bounds[1:] - bounds[:-1]).tolist()
    if pixels.numel() and bool(pixels[0]):
        counts = [0] + counts
    return {"size": [int(height), int(width)], "counts": counts}
