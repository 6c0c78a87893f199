"""Post-processing: semantic, panoptic and instance segmentation from the model's per-query outputs.

`ITAImageProcessor.post_process_semantic_segmentation`, `post_process_panoptic_segmentation` and
`post_process_instance_segmentation` call these functions, one image at a time:

- `semantic_map` / `semantic_scores` are FC-CLIP's `semantic_inference` followed by the bilinear resize to the
  output size, computed in bounded memory (each beside its plain formula, `semantic_map_reference` and
  `semantic_scores_reference`; `tests/test_postprocessing.py` checks each pair);

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

import functools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NoReturn, Protocol, cast

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput

__all__ = [
    "ITAOutputFrames",
    "checked_outputs",
    "semantic_inputs",
    "semantic_segmentation",
    "panoptic_segmentation",
    "instance_segmentation",
    "query_images",
    "class_id_set",
    "query_mask_logits",
    "panoptic_segments",
    "instance_segments",
    "binary_mask_to_coco_rle",
    "bilinear_taps",
    "bilinear_resize_rows",
    "bilinear_combine",
    "resized_argmax",
    "banded_semantic_map",
    "semantic_map",
    "semantic_map_reference",
    "semantic_scores",
    "semantic_scores_reference",
]


# ----------------------------------------------------------------------------------------------------------
# Bilinear resampling for post-processing
# ----------------------------------------------------------------------------------------------------------


def bilinear_taps(input_size: int, output_size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The two input rows and weights of each output row of a bilinear resize (align_corners=False, no
    antialiasing), as PyTorch's CPU kernel computes them: `(lower, upper, lower weight, upper weight)`, each
    `[output_size]` on the CPU.

    The kernel's source coordinate `scale * (i + 0.5) - 0.5` (float32 scale) is rounded once, as a fused
    multiply-add does: evaluated exactly in float64, then rounded to float32.
    """
    if input_size == output_size:  # PyTorch copies: each row from itself
        rows = torch.arange(output_size)
        return rows, rows, torch.ones(output_size), torch.zeros(output_size)
    scale = float(torch.tensor(input_size / output_size, dtype=torch.float32))
    source = ((torch.arange(output_size, dtype=torch.float64) + 0.5) * scale - 0.5).float().clamp(min=0)
    lower = source.long().clamp(max=input_size - 1)
    upper = (lower + 1).clamp(max=input_size - 1)
    upper_weight = (source - lower).clamp(0, 1)
    lower_weight = 1 - upper_weight
    return lower, upper, lower_weight, upper_weight


def bilinear_resize_rows(maps: Tensor, taps: tuple[Tensor, ...], start: int, stop: int, offset: int) -> Tensor:
    """Rows `start:stop` of the bilinear row resize described by `taps`, from `maps` `[n, ...]` (contiguous)
    holding the input rows `offset:offset + n`: `[stop - start, ...]`.

    One product with the band's `[stop - start, n]` interpolation matrix (two weights per row): a single pass
    over the output, where gathering two rows and mixing them takes several.
    """
    lower, upper, lower_weight, upper_weight = (tap[start:stop] for tap in taps)
    rows = torch.arange(stop - start)
    matrix = torch.zeros((stop - start, maps.shape[0]))
    matrix.index_put_((rows, lower - offset), lower_weight, accumulate=True)
    matrix.index_put_((rows, upper - offset), upper_weight, accumulate=True)
    matrix = matrix.to(device=maps.device, dtype=maps.dtype)
    return (matrix @ maps.reshape(maps.shape[0], -1)).view(stop - start, *maps.shape[1:])


def _resize_columns(maps: Tensor, width: int) -> Tensor:
    """`[n, Q, W]` -> `[n, Q, width]`, the last axis resized as the columns of a bilinear resize: a 1-D linear
    resize, half the work of a 2-D one that keeps the rows."""
    rows, queries, _ = maps.shape
    resized = F.interpolate(maps.reshape(1, rows * queries, -1), size=width, mode="linear", align_corners=False)
    return resized.view(rows, queries, width)


@functools.cache
def _fused_addcmul(device_type: str) -> bool:
    """Whether float32 `torch.addcmul` rounds once (a fused multiply-add) on this kind of device: `(1 + 2^-12)^2 - 1`
    is `2^-11 + 2^-24` fused and `2^-11` with the product rounded first."""
    first = torch.full((64,), 1 + 2.0**-12, device=device_type)
    return bool((torch.addcmul(torch.full_like(first, -1.0), first, first) == 2.0**-11 + 2.0**-24).all())


def _fused_lerp(first: Tensor, first_weight: Tensor, second: Tensor, second_weight: Tensor) -> Tensor:
    """`first * first_weight + second * second_weight` in float32, the first product fused into the sum (one
    rounding), as PyTorch's CPU bilinear kernel computes it: `torch.addcmul` where it fuses, else evaluated in
    float64 (exact product) and rounded."""
    if _fused_addcmul(first.device.type):
        return torch.addcmul(second * second_weight, first, first_weight)
    second = (second * second_weight).double()
    return second.addcmul_(first.double(), first_weight.double()).to(first.dtype)


def bilinear_combine(
    top_left: Tensor,
    top_right: Tensor,
    bottom_left: Tensor,
    bottom_right: Tensor,
    left_weight: Tensor,
    right_weight: Tensor,
    top_weight: Tensor,
    bottom_weight: Tensor,
) -> Tensor:
    """A bilinear value from its four source values and weights, with the operations and roundings of PyTorch's
    CPU kernel (`F.interpolate(..., mode="bilinear")` on a channels-first float32 map): bit-identical to it there
    (tested); elsewhere equal up to float rounding."""
    top = _fused_lerp(top_left, left_weight, top_right, right_weight)
    bottom = _fused_lerp(bottom_left, left_weight, bottom_right, right_weight)
    return _fused_lerp(top, top_weight, bottom, bottom_weight)


# A source pixel whose two best scores differ by at most this fraction of the larger magnitude is "undecided":
# bilinear mixing rounds each score by a few units of 2^-24 relative, which could turn such a margin into a tie
# or its reverse. A generous bound: it only sends a few more pixels to the full computation.
_DECIDED_MARGIN = 2.0**-16


def _top_two(scores: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Best class, its score, and whether it wins by more than rounding, over the last axis of `scores`."""
    if scores.shape[-1] == 1:
        best = scores[..., 0]
        return torch.zeros_like(best, dtype=torch.long), best, torch.ones_like(best, dtype=torch.bool)
    values, indices = scores.topk(2, dim=-1)
    first, second = values[..., 0], values[..., 1]
    decided = (first - second) > _DECIDED_MARGIN * torch.maximum(first.abs(), second.abs())
    return indices[..., 0], first, decided


def _uniform_cells(labels: Tensor, decided: Tensor) -> Tensor:
    """`[n, w]`: the class shared by the 2x2 source pixels whose top left is (r, c), or -1 where they are not all
    decided for one class. The next row and column are clamped at the borders, as bilinear taps are (so a
    band's last row is right only for the image's last row)."""
    cells = torch.where(decided, labels, -1)
    pairs = torch.where(cells == torch.cat([cells[:, 1:], cells[:, -1:]], dim=1), cells, -1)
    return torch.where(pairs == torch.cat([pairs[1:], pairs[-1:]], dim=0), pairs, -1)


class _ScoreSource(Protocol):
    """Exact class scores `[m, K]` of some source pixels of a band (`_ResizedArgmax.add_rows`'s `scores_at`)."""

    def __call__(self, rows: Tensor, columns: Tensor) -> Tensor: ...

    def prepare(self, rows: Tensor, columns: Tensor) -> None: ...

    def dense_rows(self) -> Tensor | None: ...

    def last_row(self) -> "_ScoreSource": ...


class _DenseScores:
    """Exact scores of a band of source pixels read from a score tensor `[n, w, K]` (`_ResizedArgmax`'s source)."""

    def __init__(self, scores: Tensor):
        self.scores = scores

    def __call__(self, rows: Tensor, columns: Tensor) -> Tensor:
        scores: Tensor = self.scores[rows, columns]  # [m, K]
        return scores

    def prepare(self, rows: Tensor, columns: Tensor) -> None:
        pass

    def dense_rows(self) -> Tensor:
        """Every pixel's scores `[n, w, K]`."""
        return self.scores

    def last_row(self) -> "_DenseScores":
        return _DenseScores(self.scores[-1:])


class _StackedScores:
    """The scores of two one-row sources stacked: row 0 from `first`, row 1 from `second`."""

    def __init__(self, first: _ScoreSource, second: _ScoreSource) -> None:
        self.first, self.second = first, second

    def prepare(self, rows: Tensor, columns: Tensor) -> None:
        in_first = rows == 0
        self.first.prepare(rows[in_first], columns[in_first])
        self.second.prepare(rows[~in_first] - 1, columns[~in_first])

    def dense_rows(self) -> Tensor | None:
        first, second = self.first.dense_rows(), self.second.dense_rows()
        return None if first is None or second is None else torch.cat([first, second[:1]])

    def __call__(self, rows: Tensor, columns: Tensor) -> Tensor:
        in_first = rows == 0
        if in_first.all():
            return self.first(rows, columns)
        if not in_first.any():
            return self.second(rows - 1, columns)
        first = self.first(rows[in_first], columns[in_first])
        second = self.second(rows[~in_first] - 1, columns[~in_first])
        result = first.new_empty((rows.numel(), first.shape[-1]))
        result[in_first], result[~in_first] = first, second
        return result

    def last_row(self) -> _ScoreSource:
        raise NotImplementedError("a window between two bands is never kept")


# A band of source rows as `_ResizedArgmax.add_rows` takes it: (labels, decided, best scores or None, exact scores).
_Band = tuple[Tensor, Tensor, Tensor | None, _ScoreSource]


class _ResizedArgmax:
    """Arg-max over classes of a bilinearly resized score map, fed with consecutive bands of source rows.

    A bilinear value is a convex combination of four source scores: where the four source pixels of an output
    pixel share their best class, each by more than rounding (`_top_two`), that class wins there too, and its
    score is the resize of the sources' best scores. Only the other output pixels, along the label boundaries,
    mix every class's scores (`bilinear_combine`, PyTorch's arithmetic). `add_rows` takes, for the next source
    rows, each pixel's best class `[n, w]`, whether it is decided, its best score (or None) and the exact scores
    of any of its pixels (`scores_at(rows, columns) -> [m, K]`, asked only along the boundaries); it fills the
    target rows those rows complete in `labels` (and `scores`, the winning score, when asked for).
    """

    def __init__(
        self,
        source_size: tuple[int, int],
        target_size: tuple[int, int],
        num_classes: int,
        device: torch.device,
        winning_scores: bool,
        chunk_elements: int,
    ):
        (self.height, self.width), (target_height, target_width) = source_size, target_size
        self.row_taps = bilinear_taps(self.height, target_height)
        column_taps = [tap.to(device) for tap in bilinear_taps(self.width, target_width)]
        self.left, self.right = column_taps[:2]
        self.left_weight, self.right_weight = column_taps[2][None], column_taps[3][None]  # [1, W]
        self.labels = torch.empty((target_height, target_width), dtype=torch.long, device=device)
        self.scores = torch.empty((target_height, target_width), device=device) if winning_scores else None
        self.chunk_elements = chunk_elements
        self.pixels_per_chunk = max(1, chunk_elements // max(num_classes, 1))
        self.filled = 0  # target rows done
        self.next_row = 0  # first source row of the next band
        self.last: _Band | None = None  # the previous band's last row

    def add_rows(self, labels: Tensor, decided: Tensor, best: Tensor | None, scores_at: _ScoreSource) -> None:
        band = (labels, decided, best, scores_at)
        first, last = self.next_row, self.next_row + labels.shape[0] - 1
        if self.last is not None:  # target rows between the previous band's last row and this band's first
            kept_labels, kept_decided, kept_best, kept_scores = self.last
            window = (
                torch.cat([kept_labels, labels[:1]]),
                torch.cat([kept_decided, decided[:1]]),
                None if best is None or kept_best is None else torch.cat([kept_best, best[:1]]),
                _StackedScores(kept_scores, scores_at),
            )
            self._fill(first - 1, window)
        self._fill(first, band, last_band=last == self.height - 1)
        self.last = (labels[-1:], decided[-1:], None if best is None else best[-1:], scores_at.last_row())
        self.next_row = last + 1

    def _fill(self, first_row: int, band: "_Band", last_band: bool = False) -> None:
        """Target rows whose two source rows lie in `band` (source rows from `first_row`)."""
        labels, decided, best, scores_at = band
        upper = self.row_taps[1]
        stop = len(upper) if last_band else int(torch.searchsorted(upper, first_row + labels.shape[0] - 1, right=True))
        start, self.filled = self.filled, max(self.filled, stop)
        if stop <= start:
            return
        device = labels.device
        lower, upper, top_weight, bottom_weight = (tap[start:stop] for tap in self.row_taps)
        top, bottom = (lower - first_row).to(device), (upper - first_row).to(device)
        top_weight, bottom_weight = top_weight.to(device)[:, None], bottom_weight.to(device)[:, None]  # [rows, 1]
        left, right = self.left, self.right
        out_labels = self.labels[start:stop]
        cells = _uniform_cells(labels, decided)[top]  # [rows, w]: the cell's shared class, -1 elsewhere
        torch.index_select(cells, 1, left, out=out_labels)
        out_scores = None if self.scores is None else self.scores[start:stop]
        boundary_rows = (cells < 0).any(dim=1).nonzero(as_tuple=True)[0]
        rows, columns = (out_labels[boundary_rows] < 0).nonzero(as_tuple=True)
        rows = boundary_rows[rows]
        dense = scores_at.dense_rows() if rows.numel() > _DENSE_TARGET_SHARE * out_labels.numel() else None
        if dense is not None:  # boundaries over much of these rows: do their cells keep most classes as candidates?
            sample = torch.linspace(0, rows.numel() - 1, min(rows.numel(), 256), device=device).long()
            r, c = rows[sample], columns[sample]
            sampled = dense[
                torch.stack([top[r], top[r], bottom[r], bottom[r]]), torch.stack([left[c], right[c], left[c], right[c]])
            ]  # [4, s, K]
            kept = (_cell_candidates(sampled) < dense.shape[-1]).sum(dim=1).float().mean()
            if kept > _DENSE_CANDIDATE_SHARE * dense.shape[-1]:  # then every pixel, every class, without gathers
                self._fill_rows(dense, top, bottom, top_weight, bottom_weight, out_labels, out_scores)
                return
        if out_scores is not None and best is not None:  # where the cell's class is shared: the sources' best, resized
            out_scores.copy_(
                bilinear_combine(
                    best[top][:, left],
                    best[top][:, right],
                    best[bottom][:, left],
                    best[bottom][:, right],
                    self.left_weight,
                    self.right_weight,
                    top_weight,
                    bottom_weight,
                )
            )
        if not rows.numel():
            return
        # The boundary's output pixels by source cell (its four source pixels): each cell's scores are read once,
        # and only the classes that can win somewhere in the cell are mixed at its pixels (`_cell_candidates`).
        cell_ids, pixel_cell = torch.unique(top[rows] * labels.shape[1] + left[columns], return_inverse=True)
        example = torch.empty_like(cell_ids).scatter_(0, pixel_cell, torch.arange(rows.numel(), device=device))
        cell_rows, cell_columns = rows[example], columns[example]
        corner_rows = torch.cat([top[cell_rows], top[cell_rows], bottom[cell_rows], bottom[cell_rows]])
        corner_columns = torch.cat([left[cell_columns], right[cell_columns], left[cell_columns], right[cell_columns]])
        scores_at.prepare(corner_rows, corner_columns)  # every source pixel the boundary needs, computed at once
        order = torch.argsort(pixel_cell)  # the pixels cell by cell, so that chunks of cells hold chunks of pixels
        rows, columns, pixel_cell = rows[order], columns[order], pixel_cell[order]
        pixel_starts = torch.searchsorted(pixel_cell, torch.arange(cell_ids.numel() + 1, device=device))
        cells_per_chunk = max(1, self.pixels_per_chunk // 4)
        for begin in range(0, cell_ids.numel(), cells_per_chunk):
            end = min(begin + cells_per_chunk, cell_ids.numel())
            corners = torch.stack(
                [
                    scores_at(
                        corner_rows[k * len(cell_ids) + begin : k * len(cell_ids) + end],
                        corner_columns[k * len(cell_ids) + begin : k * len(cell_ids) + end],
                    )
                    for k in range(4)
                ]
            )  # [4, cells, K]
            candidates = _cell_candidates(corners)  # [cells, C], ascending class ids, K where none
            first, last = int(pixel_starts[begin]), int(pixel_starts[end])
            r, c = rows[first:last], columns[first:last]
            local = pixel_cell[first:last] - begin
            weights = (self.left_weight[0, c, None], self.right_weight[0, c, None], top_weight[r], bottom_weight[r])
            if 2 * candidates.shape[1] > corners.shape[-1]:  # little to leave out: every class, without gathers
                value, label = bilinear_combine(
                    corners[0][local], corners[1][local], corners[2][local], corners[3][local], *weights
                ).max(dim=-1)
            else:
                index = candidates.clamp_max(corners.shape[-1] - 1)
                corner_scores = [corners[k].gather(1, index)[local] for k in range(4)]  # [pixels, C] each
                picked = candidates[local]
                mixed = bilinear_combine(
                    corner_scores[0], corner_scores[1], corner_scores[2], corner_scores[3], *weights
                )
                mixed.masked_fill_(picked == corners.shape[-1], float("-inf"))  # [pixels, C]
                value, position = mixed.max(dim=-1)  # the first of tied candidates: the first of tied classes
                label = picked.gather(1, position[:, None])[:, 0]
            out_labels[r, c] = label  # the first of tied classes, as argmax
            if out_scores is not None:
                out_scores[r, c] = value

    def _fill_rows(
        self,
        scores: Tensor,
        top: Tensor,
        bottom: Tensor,
        top_weight: Tensor,
        bottom_weight: Tensor,
        out_labels: Tensor,
        out_scores: Tensor | None,
    ) -> None:
        """Every pixel of these target rows from the band's scores `[n, w, K]` (`top`, `bottom`: each target row's
        source rows in the band): each source row resized along the columns once for all the target rows that read
        it, then mixed per target row. `bilinear_combine`'s operations in its order, so the same values."""
        width, num_classes = out_labels.shape[1], scores.shape[-1]
        rows_per_chunk = max(1, self.chunk_elements // (width * num_classes))
        left_weight, right_weight = self.left_weight[0, :, None], self.right_weight[0, :, None]  # [W, 1]
        for begin in range(0, len(top), rows_per_chunk):
            end = min(begin + rows_per_chunk, len(top))
            first, last = int(top[begin]), int(bottom[end - 1])
            source = scores[first : last + 1]
            columns = _fused_lerp(source[:, self.left], left_weight, source[:, self.right], right_weight)  # [n, W, K]
            mixed = _fused_lerp(
                columns[top[begin:end] - first],
                top_weight[begin:end, :, None],
                columns[bottom[begin:end] - first],
                bottom_weight[begin:end, :, None],
            )
            value, out_labels[begin:end] = mixed.max(dim=-1)  # the first of tied classes, as argmax
            if out_scores is not None:
                out_scores[begin:end] = value


# A band of target rows where label boundaries cover more than this share of the pixels, and whose boundary cells
# keep most classes as candidates (in a sample of them), is mixed whole, every class at every pixel
# (`_ResizedArgmax._fill_rows`), when its source scores are at hand for every pixel.
_DENSE_TARGET_SHARE = 0.2
_DENSE_CANDIDATE_SHARE = 0.5


def _cell_candidates(corners: Tensor) -> Tensor:
    """The classes that can win somewhere in each source cell, from its four corners' scores `[4, cells, K]`:
    `[cells, C]` class ids in ascending order, padded with K.

    A bilinear value of a class lies between its smallest and largest corner score (up to rounding), so a class
    whose largest corner score is below some class's smallest one never wins in the cell: it is left out, with a
    margin (`_DECIDED_MARGIN` of the cell's largest magnitude) far above the mixing's rounding. The classes kept
    are mixed exactly as all would be, in class order, so the arg-max and its first-of-ties rule are unchanged."""
    highest, lowest = corners.amax(dim=0), corners.amin(dim=0)  # [cells, K]
    floor = lowest.amax(dim=-1, keepdim=True)
    margin = _DECIDED_MARGIN * corners.abs().amax(dim=(0, 2))[:, None]
    kept = highest >= floor - margin
    num_classes = corners.shape[-1]
    width = int(kept.sum(dim=-1).max())
    class_ids = torch.arange(num_classes, device=corners.device).expand_as(kept)
    return torch.where(kept, class_ids, num_classes).sort(dim=-1).values[:, :width]


def resized_argmax(
    scores: Tensor, size: tuple[int, int], winning_scores: bool = False, chunk_elements: int = 2**22
) -> tuple[Tensor, Tensor | None]:
    """Arg-max over classes of `scores` `[K, h, w]` resized bilinearly to `size`, and the winning score with
    `winning_scores`: `F.interpolate(scores[None], size, mode="bilinear").max(1)`, at a cost that follows the label
    boundaries (see `_ResizedArgmax`) and without the `[K, H, W]` resized map."""
    num_classes, height, width = scores.shape
    resizer = _ResizedArgmax((height, width), size, num_classes, scores.device, winning_scores, chunk_elements)
    rows = max(1, chunk_elements // max(num_classes * width, 1))
    source = scores.permute(1, 2, 0)  # [h, w, K]
    for top in range(0, height, rows):
        band = source[top : top + rows].contiguous()
        labels, best, decided = _top_two(band)
        resizer.add_rows(labels, decided, best if winning_scores else None, _DenseScores(band))
    return resizer.labels, resizer.scores


# ----------------------------------------------------------------------------------------------------------
# Semantic post-processing: class scores from mask logits, resized to the target size
# ----------------------------------------------------------------------------------------------------------


def semantic_scores_reference(
    class_probs: Tensor,
    mask_logits: Tensor,
    image_size: tuple[int, int],
    frame_size: tuple[int, int],
    target_size: tuple[int, int],
    masks_first: bool = False,
) -> Tensor:
    """FC-CLIP's semantic inference for one image, the plain formula: `[K, H_t, W_t]` class scores.

    `mask_logits` `[Q, h, w]` cover the image's padded frame `frame_size` (upsampled to it bilinearly), whose top
    left `image_size` is the image; `class_probs` `[Q, K]`. Default: sigmoid, class sum, crop, resize to
    `target_size`. `masks_first`: crop and resize the mask logits to the target before the sigmoid and the sum.
    """
    height, width = image_size
    masks = F.interpolate(mask_logits[None].float(), size=tuple(frame_size), mode="bilinear", align_corners=False)
    masks = masks[0, :, :height, :width]
    if masks_first:
        masks = F.interpolate(masks[None], size=tuple(target_size), mode="bilinear", align_corners=False)[0]
        return torch.einsum("qk,qhw->khw", class_probs, masks.sigmoid())
    scores = torch.einsum("qk,qhw->khw", class_probs, masks.sigmoid())
    if tuple(target_size) == (height, width):
        return scores
    return F.interpolate(scores[None], size=tuple(target_size), mode="bilinear", align_corners=False)[0]


def semantic_map_reference(
    class_probs: Tensor,
    mask_logits: Tensor,
    image_size: tuple[int, int],
    frame_size: tuple[int, int],
    target_size: tuple[int, int],
    masks_first: bool = False,
) -> tuple[Tensor, Tensor]:
    """Label map and winning score `[H_t, W_t]` of `semantic_scores_reference` (arg-max: the first of tied
    classes)."""
    best, labels = semantic_scores_reference(
        class_probs, mask_logits, image_size, frame_size, target_size, masks_first
    ).max(dim=0)
    return labels, best


class _FrameRows:
    """Rows of the masks upsampled bilinearly from the mask grid `[Q, h, w]` to the padded frame, computed band by
    band: a band of frame rows needs a few grid rows, resized along the columns by one 1-D resize and along the
    rows by one matrix product. Bands are laid out rows first, `[rows, Q, frame width]`."""

    def __init__(self, mask_logits: Tensor, frame_size: tuple[int, int]):
        self.frame_height, self.frame_width = frame_size
        self.taps = bilinear_taps(mask_logits.shape[-2], self.frame_height)
        self.grid = mask_logits.transpose(0, 1)  # [grid rows, Q, grid columns], a view

    def __call__(self, first: int, last: int) -> Tensor:
        """Frame rows `first..last` (inclusive): `[n, Q, frame width]`."""
        grid_first, grid_last = int(self.taps[0][first]), int(self.taps[1][last])
        rows = _resize_columns(self.grid[grid_first : grid_last + 1], self.frame_width)
        return bilinear_resize_rows(rows, self.taps, first, last + 1, grid_first)


def _target_bands(
    class_probs: Tensor,
    mask_logits: Tensor,
    image_size: tuple[int, int],
    frame_size: tuple[int, int],
    target_size: tuple[int, int],
    masks_first: bool,
    chunk_elements: int,
) -> Iterator[tuple[int, int, Tensor]]:
    """Yields `(top, bottom, scores [rows, W_t, K])` for bands of target rows: the masks are resized to the target
    before the class sum (both linear, so the same scores as summing first, up to float rounding), and no
    intermediate exceeds about `chunk_elements` values (at least one row)."""
    (height, width), (target_height, target_width) = image_size, target_size
    num_queries, num_classes = class_probs.shape
    frame_rows = _FrameRows(mask_logits, frame_size)
    resize = (target_height, target_width) != (height, width)
    down_rows = bilinear_taps(height, target_height) if resize else None
    per_row = max(
        num_queries * frame_rows.frame_width * height / target_height, (num_classes + num_queries) * target_width
    )
    band = max(1, min(target_height, int(chunk_elements // per_row) - 2))
    for top in range(0, target_height, band):
        bottom = min(top + band, target_height)
        if down_rows is not None:  # resize
            first, last = int(down_rows[0][top]), int(down_rows[1][bottom - 1])
            masks = frame_rows(first, last)  # [n, Q, frame width]
            if not masks_first:
                masks.sigmoid_()
            masks = bilinear_resize_rows(masks, down_rows, top, bottom, first)[:, :, :width]  # [rows, Q, width]
            if width != target_width:
                masks = _resize_columns(masks, target_width)
            if masks_first:
                masks.sigmoid_()
        else:
            masks = frame_rows(top, bottom - 1)[:, :, :width].sigmoid_()
        yield top, bottom, torch.matmul(masks.transpose(1, 2), class_probs)  # [rows, W_t, K]


# A grid cell is decided for a class when its lower bound beats every other class's upper bound by this fraction of
# the class's upper bound: far above the rounding of the bounds and of the pixels' own scores (`_DECIDED_MARGIN`).
_GRID_DECIDED_MARGIN = 2.0**-14


def _box_bounds(upper: Tensor, lower: Tensor) -> tuple[Tensor, Tensor]:
    """Per grid cell (r, c) with grid row r in `upper` `[Q, n, w]` and row r + 1 in `lower` (the same row at the
    grid's last row), the smallest and largest logit of each query over the grid pixels (r, c), (r + 1, c),
    (r, c + 1), (r + 1, c + 1), the next column clamped at the border: `[Q, n, w]` each. Every frame pixel whose
    upsampling taps start at (r, c) mixes these four values, so its logit lies between the two."""
    low, high = torch.minimum(upper, lower), torch.maximum(upper, lower)
    low = torch.minimum(low, torch.cat([low[:, :, 1:], low[:, :, -1:]], dim=2))
    high = torch.maximum(high, torch.cat([high[:, :, 1:], high[:, :, -1:]], dim=2))
    return low, high


def _certain_classes(low: Tensor, high: Tensor, class_probs: Tensor) -> Tensor:
    """`[n]` the class certain to win everywhere in boxes whose queries' mask probabilities lie between `low` and
    `high` (`[n, Q]`, sigmoids), or -1.

    Class scores are `sum_q p[q, k] * m_q` with `p >= 0`, so the smallest margin of a candidate class `c` over
    class `k` in a box is `sum_q max(p[q, c] - p[q, k], 0) * low_q - max(p[q, k] - p[q, c], 0) * high_q`.
    """
    decisions = torch.full((low.shape[0],), -1, dtype=torch.long, device=low.device)
    candidates = (low @ class_probs).argmax(dim=-1)  # the best lower bound
    for candidate in torch.unique(candidates).tolist():
        boxes = (candidates == candidate).nonzero(as_tuple=True)[0]
        box_low, box_high = low.index_select(0, boxes), high.index_select(0, boxes)
        lead = class_probs[:, candidate : candidate + 1] - class_probs  # [Q, K]
        margins = box_low @ lead.clamp(min=0) - box_high @ (-lead).clamp(min=0)  # [n, K]
        margins[:, candidate] = float("inf")
        certain = margins.amin(dim=-1) > _GRID_DECIDED_MARGIN * (box_high @ class_probs[:, candidate])
        decisions[boxes[certain]] = candidate
    return decisions


def _grid_decisions(class_probs: Tensor, mask_logits: Tensor, chunk_elements: int) -> Tensor:
    """`[h, w]` class that wins at every frame pixel upsampled from grid cell (r, c) of `mask_logits` `[Q, h, w]`,
    or -1 where that is not certain (`_certain_classes` on the cell's logit bounds, `_box_bounds`): two matrix
    products per cell, at the grid's resolution (16 times fewer pixels than the frame's)."""
    (num_queries, num_classes), (height, width) = class_probs.shape, mask_logits.shape[-2:]
    decisions = torch.full((height, width), -1, dtype=torch.long, device=mask_logits.device)
    rows = max(1, chunk_elements // (max(num_queries, num_classes) * width))
    for top in range(0, height, rows):
        window = mask_logits[:, top : top + rows + 1]
        if top + rows >= height:  # the last row's cells end on itself
            window = torch.cat([window, mask_logits[:, -1:]], dim=1)
        decisions[top : top + rows] = _cell_decisions(window[:, :-1], window[:, 1:], class_probs)
    return decisions


def _cell_decisions(upper: Tensor, lower: Tensor, class_probs: Tensor) -> Tensor:
    """`[n, w]` the class certain to win in each grid cell whose rows are `upper` and `lower` `[Q, n, w]`
    (`_box_bounds`), or -1."""
    low, high = (bound.flatten(1).t().sigmoid() for bound in _box_bounds(upper, lower))  # [cells, Q]
    return _certain_classes(low, high, class_probs).view(upper.shape[1:])


# Before the grid's cells are decided, one grid row in `_PROBE_STRIDE` (under the image) is: when those rows leave a
# larger share of cells open than the grid path can afford, the others are not decided and the banded path runs
# (near that share the two paths cost about the same; the label map is the same either way). The probe costs a small
# share of the decisions it spares (timings in benchmarks/README.md, "Post-processing probe").
_PROBE_STRIDE = 8


def _grid_extent(grid_size: Sequence[int], image_size: tuple[int, int], frame_size: tuple[int, int]) -> tuple[int, int]:
    """Grid rows and columns whose cells hold pixels of the image (not only of its padding)."""
    rows, columns = (
        int(bilinear_taps(size, frame)[0][image - 1]) + 1
        for size, frame, image in zip(grid_size, frame_size, image_size)
    )
    return rows, columns


def _probe_undecided_share(
    class_probs: Tensor, mask_logits: Tensor, image_size: tuple[int, int], frame_size: tuple[int, int]
) -> float:
    """The share of open cells (`_grid_decisions`) among those of every `_PROBE_STRIDE`-th grid row under the image:
    an estimate of `_undecided_share` at an eighth of its cost."""
    grid_rows, grid_columns = _grid_extent(mask_logits.shape[-2:], image_size, frame_size)
    rows = torch.arange(0, grid_rows, _PROBE_STRIDE, device=mask_logits.device)
    below = (rows + 1).clamp(max=mask_logits.shape[-2] - 1)
    decisions = _cell_decisions(mask_logits.index_select(1, rows), mask_logits.index_select(1, below), class_probs)
    return (decisions[:, :grid_columns] < 0).float().mean().item()


_LogitsAt = Callable[[Tensor, Tensor], Tensor]  # (rows, columns) of frame pixels -> their mask logits [m, Q]


class _PixelScores:
    """Exact class scores of pixels of a band of image rows, each pixel computed once and kept while the band is in
    use: its mask logits upsampled from the grid (`_upsampled_logits`), sigmoid, class sum."""

    def __init__(
        self, logits_at: _LogitsAt, class_probs: Tensor, first_row: int, rows: int, width: int, chunk_elements: int
    ) -> None:
        self.logits_at, self.class_probs, self.first_row = logits_at, class_probs, first_row
        self.chunk_elements = chunk_elements
        self.slots = torch.full((rows, width), -1, dtype=torch.long, device=class_probs.device)  # row in `table`
        self.parts: list[Tensor] = []  # the scores computed so far, `[m, K]` each
        self.table: Tensor | None = None  # their concatenation, built when read

    def compute(self, rows: Tensor, columns: Tensor) -> Tensor:
        """Computes, keeps and returns `[m, K]` the scores of these pixels (distinct, not computed yet)."""
        per_chunk = max(1, self.chunk_elements // max(*self.class_probs.shape))
        scores = torch.cat(
            [
                self.logits_at(
                    rows[start : start + per_chunk] + self.first_row, columns[start : start + per_chunk]
                ).sigmoid()
                @ self.class_probs
                for start in range(0, rows.numel(), per_chunk)
            ]
        )
        done = sum(part.shape[0] for part in self.parts)
        self.slots[rows, columns] = torch.arange(done, done + rows.numel(), device=rows.device)
        self.parts.append(scores)
        self.table = None
        return scores

    def dense_rows(self) -> None:
        return None  # only some pixels are scored

    def prepare(self, rows: Tensor, columns: Tensor) -> None:
        """Computes the scores of these pixels that are not known yet."""
        missing = (self.slots[rows, columns] < 0).nonzero(as_tuple=True)[0]
        if missing.numel():
            width = self.slots.shape[1]
            pixels = torch.unique(rows[missing] * width + columns[missing])
            self.compute(pixels // width, pixels % width)

    def __call__(self, rows: Tensor, columns: Tensor) -> Tensor:
        self.prepare(rows, columns)
        if self.table is None:
            self.table = torch.cat(self.parts) if len(self.parts) > 1 else self.parts[0]
            self.parts = [self.table]
        scores: Tensor = self.table.index_select(0, self.slots[rows, columns])
        return scores

    def last_row(self) -> "_PixelScores":
        rows, width = self.slots.shape
        kept = _PixelScores(self.logits_at, self.class_probs, self.first_row + rows - 1, 1, width, self.chunk_elements)
        (columns,) = (self.slots[-1] >= 0).nonzero(as_tuple=True)
        if columns.numel():
            kept.parts = [self(torch.full_like(columns, rows - 1), columns)]
            kept.slots[0, columns] = torch.arange(columns.numel(), device=columns.device)
        return kept


def _upsampled_logits(mask_logits: Tensor, frame_size: tuple[int, int]) -> _LogitsAt:
    """`logits_at(rows, columns) -> [m, Q]`: the mask logits `[Q, h, w]` upsampled bilinearly to the padded frame
    (align_corners=False), at the given frame pixels only, with PyTorch's taps and weights."""
    height, width = mask_logits.shape[-2:]
    table = mask_logits.flatten(1).t().contiguous()  # [h * w, Q]: a grid pixel's queries side by side
    device = mask_logits.device
    top, bottom, top_weight, bottom_weight = (tap.to(device) for tap in bilinear_taps(height, frame_size[0]))
    left, right, left_weight, right_weight = (tap.to(device) for tap in bilinear_taps(width, frame_size[1]))

    def logits_at(rows: Tensor, columns: Tensor) -> Tensor:
        upper, lower = top[rows] * width, bottom[rows] * width
        first, second = left[columns], right[columns]
        w0, w1 = left_weight[columns, None], right_weight[columns, None]
        upper_row = table.index_select(0, upper + first).mul_(w0).add_(table.index_select(0, upper + second).mul_(w1))
        lower_row = table.index_select(0, lower + first).mul_(w0).add_(table.index_select(0, lower + second).mul_(w1))
        return upper_row.mul_(top_weight[rows, None]).add_(lower_row.mul_(bottom_weight[rows, None]))

    return logits_at


def _undecided_share(decisions: Tensor, image_size: tuple[int, int], frame_size: tuple[int, int]) -> float:
    """The share of the grid cells under the image (not its padding) that `_grid_decisions` leaves undecided."""
    grid_rows, grid_columns = _grid_extent(decisions.shape, image_size, frame_size)
    return (decisions[:grid_rows, :grid_columns] < 0).float().mean().item()


# A band of image rows whose grid leaves more than this share of its pixels open is scored whole, with the masks
# upsampled by matrix products (`_FrameRows`): cheaper there than gathering each open pixel's grid neighbours.
_DENSE_BAND_SHARE = 0.5


def _image_score_bands(
    class_probs: Tensor,
    mask_logits: Tensor,
    decisions: Tensor,
    image_size: tuple[int, int],
    frame_size: tuple[int, int],
    winning_scores: bool,
    chunk_elements: int,
) -> Iterator["_Band"]:
    """Yields, for bands of image rows, what `_ResizedArgmax.add_rows` takes: each pixel's best class, whether it
    wins by more than rounding, its score (with `winning_scores`) and the source of exact scores.

    Grid cells whose bounds decide their class (`decisions`, from `_grid_decisions`) give their pixels' classes
    without any class score; only the other pixels' scores are computed (`_PixelScores`), and those along label
    boundaries when the resize asks for them. A band the grid leaves mostly open is scored whole instead.
    """
    (height, width), (num_queries, num_classes) = image_size, class_probs.shape
    logits_at = _upsampled_logits(mask_logits, frame_size)
    frame_rows = _FrameRows(mask_logits, frame_size)
    device = mask_logits.device
    cell_rows = bilinear_taps(mask_logits.shape[-2], frame_size[0])[0][:height].to(device)  # each row's grid row
    cell_columns = bilinear_taps(mask_logits.shape[-1], frame_size[1])[0][:width].to(device)
    band = max(1, chunk_elements // (max(num_queries, num_classes) * width))
    for top in range(0, height, band):
        bottom = min(top + band, height)
        labels = decisions[cell_rows[top:bottom]][:, cell_columns]  # [rows, w], -1 where undecided
        from_grid = labels >= 0
        if from_grid.float().mean() < 1 - _DENSE_BAND_SHARE:  # every pixel's scores: by matrix products, no gathers
            masks = frame_rows(top, bottom - 1)[:, :, :width].sigmoid_()  # [rows, Q, w]
            band_scores = torch.matmul(masks.transpose(1, 2), class_probs)  # [rows, w, K]
            labels, values, decided = _top_two(band_scores)
            yield labels, decided, values if winning_scores else None, _DenseScores(band_scores)
            continue
        scores = _PixelScores(logits_at, class_probs, top, bottom - top, width, chunk_elements)
        decided = from_grid.clone()
        best = torch.empty(labels.shape, device=device) if winning_scores else None
        r, c = (~from_grid).nonzero(as_tuple=True)
        if r.numel():
            labels[r, c], values, decided[r, c] = _top_two(scores.compute(r, c))
            if best is not None:
                best[r, c] = values
        if best is not None:  # the scores of the classes the grid decided: one class per pixel
            r, c = from_grid.nonzero(as_tuple=True)
            per_chunk = max(1, chunk_elements // num_queries)
            for start in range(0, r.numel(), per_chunk):
                rr, cc = r[start : start + per_chunk], c[start : start + per_chunk]
                probabilities = class_probs.t()[labels[rr, cc]]  # [m, Q]
                best[rr, cc] = (logits_at(rr + top, cc).sigmoid() * probabilities).sum(dim=-1)
        yield labels, decided, best, scores


def semantic_map(
    class_probs: Tensor,
    mask_logits: Tensor,
    image_size: tuple[int, int],
    frame_size: tuple[int, int],
    target_size: tuple[int, int],
    masks_first: bool = False,
    winning_scores: bool = True,
    chunk_elements: int = 2**22,
) -> tuple[Tensor, Tensor | None]:
    """`semantic_map_reference` with bounded memory: label map `[H_t, W_t]` and, with `winning_scores`, the
    winning score (else None). Works in bands of rows whose intermediates hold about `chunk_elements` values.

    When the class scores are resized last (the default order), the arg-max is decided where the classes are: the
    grid cells whose bounds settle their class (`_grid_decisions`) need no class scores, the image pixels of the
    others are scored exactly, and the resize to the target mixes every class only along the label boundaries
    (`_ResizedArgmax`). The cost follows the boundaries, not target pixels x classes. Where that would score more
    image pixels than the target has (undecided masks, a small target), and when the masks are resized first, the
    masks are resized to each band of target rows and summed per class there. A probe of every
    `_PROBE_STRIDE`-th grid row tells early when the grid is far too open to be worth deciding whole.
    """
    (height, width), (target_height, target_width) = image_size, target_size
    device = mask_logits.device
    class_probs, mask_logits = class_probs.float(), mask_logits.float()
    affordable = target_height * target_width / (height * width)  # open cells' share the grid path can afford
    if not masks_first and (
        affordable >= 1 or _probe_undecided_share(class_probs, mask_logits, image_size, frame_size) <= affordable
    ):
        decisions = _grid_decisions(class_probs, mask_logits, chunk_elements)
        if _undecided_share(decisions, image_size, frame_size) * height * width <= target_height * target_width:
            resizer = _ResizedArgmax(
                image_size, target_size, class_probs.shape[1], device, winning_scores, chunk_elements
            )
            for band in _image_score_bands(
                class_probs, mask_logits, decisions, image_size, frame_size, winning_scores, chunk_elements
            ):
                resizer.add_rows(*band)
            return resizer.labels, resizer.scores
    return banded_semantic_map(
        class_probs, mask_logits, image_size, frame_size, target_size, masks_first, winning_scores, chunk_elements
    )


def banded_semantic_map(
    class_probs: Tensor,
    mask_logits: Tensor,
    image_size: tuple[int, int],
    frame_size: tuple[int, int],
    target_size: tuple[int, int],
    masks_first: bool = False,
    winning_scores: bool = True,
    chunk_elements: int = 2**22,
) -> tuple[Tensor, Tensor | None]:
    """`semantic_map` computed in bands of target rows, every class's score at every target pixel (bounded memory;
    the path it takes when the masks are resized first or the grid leaves most of a small target open)."""
    class_probs, mask_logits = class_probs.float(), mask_logits.float()
    labels = torch.empty(tuple(target_size), dtype=torch.long, device=mask_logits.device)
    best = torch.empty(tuple(target_size), device=mask_logits.device) if winning_scores else None
    for top, bottom, scores in _target_bands(
        class_probs, mask_logits, image_size, frame_size, target_size, masks_first, chunk_elements
    ):
        values, labels[top:bottom] = scores.max(dim=-1)  # the first of tied classes, as argmax
        if best is not None:
            best[top:bottom] = values
    return labels, best


def semantic_scores(
    class_probs: Tensor,
    mask_logits: Tensor,
    image_size: tuple[int, int],
    frame_size: tuple[int, int],
    target_size: tuple[int, int],
    masks_first: bool = False,
    chunk_elements: int = 2**22,
) -> Tensor:
    """`semantic_scores_reference` `[K, H_t, W_t]` with no intermediate larger than about `chunk_elements` values
    beyond the output itself."""
    class_probs, mask_logits = class_probs.float(), mask_logits.float()
    output = mask_logits.new_empty((class_probs.shape[1], *target_size))
    for top, bottom, scores in _target_bands(
        class_probs, mask_logits, image_size, frame_size, target_size, masks_first, chunk_elements
    ):
        output[:, top:bottom] = scores.permute(2, 0, 1)
    return output


# ----------------------------------------------------------------------------------------------------------
# Panoptic and instance segmentation
# ----------------------------------------------------------------------------------------------------------


MaskChunks = Callable[[Tensor], Iterator[tuple[slice, Tensor]]]  # queries -> (positions, logits [n, H_t, W_t]) chunks


def _frame_grid(mask_logits: Tensor, frame_size: tuple[int, int], mask_stride: int, what: str) -> Tensor:
    """The mask logits `[..., h, w]` of a padded frame (`mask_stride` times the grid), after checking they exist."""
    (frame_height, frame_width), (height, width) = frame_size, mask_logits.shape[-2:]
    grid_height, grid_width = frame_height // mask_stride, frame_width // mask_stride
    if grid_height > height or grid_width > width:
        raise ValueError(
            f"{what} needs a {grid_height}x{grid_width} mask grid (stride {mask_stride} of its "
            f"{frame_height}x{frame_width} padded frame) but masks_queries_logits is {height}x{width}"
        )
    return mask_logits[..., :grid_height, :grid_width]


def query_mask_logits(
    mask_logits: Tensor,
    queries: Tensor,
    image_size: tuple[int, int],
    frame_size: tuple[int, int],
    target_size: tuple[int, int],
    mask_stride: int,
    max_elements: int,
) -> Iterator[tuple[slice, Tensor]]:
    """Yield `(positions, logits)` for the queries `queries` (indices into `mask_logits` `[Q, h, w]`) at the
    target size: `positions` is a slice of `queries`, `logits` its `[n, H_t, W_t]` float32 mask logits.

    As FC-CLIP's `sem_seg_postprocess`: the image's own padded frame (`frame_size`, `ITAImageProcessor.padded_frame`;
    `mask_stride` times the mask grid) is upsampled bilinearly (align_corners=False) from the mask grid, the
    padding is cropped, and the result is resized bilinearly to the target size. Logits beyond the image's own
    frame are never read, so an image gets the same result alone or in a batch with larger images. Queries are
    resized `n` at a time, with `n` chosen so that the frame-sized intermediate holds at most about
    `max_elements` values; each query's resize is independent of the others, so the values are those of
    resizing all queries at once.
    """
    height, width = image_size
    target_height, target_width = target_size
    frame_height, frame_width = frame_size
    grid = _frame_grid(mask_logits, frame_size, mask_stride, f"an image of size {tuple(image_size)}")
    per_query = frame_height * frame_width + target_height * target_width
    chunk = max(1, int(max_elements // per_query))
    for start in range(0, len(queries), chunk):
        positions = slice(start, min(start + chunk, len(queries)))
        logits = grid[queries[positions]].float().unsqueeze(0)  # [1, n, grid rows, grid columns]
        logits = F.interpolate(logits, size=(frame_height, frame_width), mode="bilinear", align_corners=False)
        logits = logits[..., :height, :width]
        if (target_height, target_width) != (height, width):
            logits = F.interpolate(logits, size=(target_height, target_width), mode="bilinear", align_corners=False)
        yield positions, logits[0]  # [n, H_t, W_t]


def panoptic_segments(
    log_probs: Tensor,
    mask_chunks_for: MaskChunks,
    target_size: tuple[int, int],
    threshold: float,
    mask_threshold: float,
    overlap_mask_area_threshold: float,
    stuff_ids: set[int],
) -> tuple[Tensor, list[dict[str, Any]]]:
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
    segments_info: list[dict[str, Any]] = []
    stuff_segment: dict[int, dict[str, Any]] = {}
    next_id = 0
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


def instance_segments(
    log_probs: Tensor,
    mask_chunks_for: MaskChunks,
    target_size: tuple[int, int],
    top_k: int,
    threshold: float,
    mask_threshold: float,
    stuff_ids: set[int],
) -> tuple[Tensor, list[dict[str, Any]]]:
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


def binary_mask_to_coco_rle(mask: Tensor | Any) -> dict[str, list[int]]:
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


# ----------------------------------------------------------------------------------------------------------
# From the model's outputs: what `ITAImageProcessor.post_process_*` check and loop over
# ----------------------------------------------------------------------------------------------------------


class ITAOutputFrames(Protocol):
    """What post-processing reads of the image processor that made the model's inputs (`ITAImageProcessor`): where
    each image sits on the mask grid, and how large its intermediates may grow."""

    size_divisor: int
    mask_stride: int
    post_process_chunk_elements: int

    def padded_frame(self, height: int, width: int, *, resized: bool = False) -> tuple[int, int]: ...


def _output_field(outputs: Any, name: str) -> Any:
    if isinstance(outputs, Mapping):
        return outputs.get(name)
    return getattr(outputs, name, None)


def _class_scores_field(outputs: Any) -> Tensor | None:
    """What the class probabilities come from: the geometric ensemble's log-probabilities (inference), else the
    decoder's class logits (a training-mode forward); softmax turns either into probabilities."""
    scores: Tensor | None = _output_field(outputs, "ensemble_log_probs")
    return _output_field(outputs, "class_queries_logits") if scores is None else scores


def _size_pair(size: Iterable[Any]) -> tuple[int, int]:
    return cast(tuple[int, int], tuple(int(value) for value in size))


def _keeps_aspect_ratio(frames: ITAOutputFrames) -> bool:
    """Whether the processor keeps each image's aspect ratio, so that `image_sizes` tell the original image's
    (a resize by the shortest edge, or none); a fixed `{"height", "width"}` resize does not."""
    if not getattr(frames, "do_resize", True):
        return True
    size = getattr(frames, "size", None)
    shortest = size.get("shortest_edge") if isinstance(size, Mapping) else getattr(size, "shortest_edge", None)
    return bool(shortest)


def _same_shape(size: tuple[int, int], image_size: tuple[int, int]) -> bool:
    """Whether `size` (height, width) has the aspect ratio of `image_size`, which was resized from it with each
    side rounded to whole pixels (and at least one pixel): the cross products differ by at most half the sides'
    sum for that rounding; twice that is allowed."""
    (height, width), (image_height, image_width) = size, image_size
    return abs(height * image_width - width * image_height) <= height + width


def _refuse_swapped_target(image_size: tuple[int, int], target_size: tuple[int, int], index: int) -> None:
    """A `ValueError` when `target_size` is evidently (width, height): it does not have the aspect ratio of the
    image the outputs came from and its transpose does. A square target, or one of yet another shape (a
    deliberate stretch), passes."""
    if target_size[0] == target_size[1] or _same_shape(target_size, image_size):
        return
    if _same_shape((target_size[1], target_size[0]), image_size):
        raise ValueError(
            f"target_sizes[{index}] is {target_size}, but image {index} was processed at {image_size} (height, "
            f"width): the target looks like (width, height), which would return a transposed map; give each target "
            f"size as (height, width), e.g. {(target_size[1], target_size[0])} (for a PIL image, image.size[::-1])"
        )


def _refuse_overflow(name: str, dtype: torch.dtype) -> NoReturn:
    raise ValueError(
        f"{name} of the model's outputs hold NaN or infinite values ({dtype}), so no class can be chosen; in "
        "float16 a sum that passes 65504 overflows: run the model in bfloat16 or float32"
    )


def checked_outputs(
    frames: ITAOutputFrames, outputs: Any, target_sizes: Sequence[Sequence[int]] | Tensor | None
) -> tuple[Tensor, Tensor, list[tuple[int, int]], list[tuple[int, int]]]:
    """The class scores `[B, Q, K + 1]`, mask logits `[B, Q, h, w]`, image sizes and target sizes of a
    post-processing call, checked: errors name the field that is missing or misshapen."""
    class_scores = _class_scores_field(outputs)
    mask_logits = _output_field(outputs, "masks_queries_logits")
    image_sizes = _output_field(outputs, "image_sizes")
    if class_scores is None or mask_logits is None:
        raise ValueError(
            "outputs must have `ensemble_log_probs` (or `class_queries_logits`) and `masks_queries_logits`"
        )
    if image_sizes is None:
        raise ValueError(
            "outputs must have `image_sizes` (each image's size inside the padded batch) to crop the padding"
        )
    if class_scores.ndim != 3 or class_scores.shape[-1] < 2:
        raise ValueError(
            f"the class scores have shape {tuple(class_scores.shape)}; expected [B, Q, K + 1] with K >= 1 classes "
            "and void last"
        )
    batch, num_queries = class_scores.shape[:2]
    if mask_logits.ndim != 4 or tuple(mask_logits.shape[:2]) != (batch, num_queries):
        raise ValueError(
            f"masks_queries_logits has shape {tuple(mask_logits.shape)}; expected [{batch}, {num_queries}, h, w]"
        )
    # NaN (or +inf log-probabilities) come from an overflow, e.g. in float16; -inf is a probability of 0.
    if class_scores.is_floating_point() and bool((class_scores.isnan() | class_scores.isposinf()).any()):
        _refuse_overflow("the class scores", class_scores.dtype)
    if mask_logits.is_floating_point() and bool(mask_logits.isnan().any()):
        _refuse_overflow("masks_queries_logits", mask_logits.dtype)
    sizes = [_size_pair(size) for size in torch.as_tensor(image_sizes).view(-1, 2).tolist()]
    if len(sizes) != batch:
        raise ValueError(f"Got {len(sizes)} image_sizes for a batch of {batch}")
    if target_sizes is None:
        targets = sizes
    else:
        if isinstance(target_sizes, Tensor):
            target_sizes = target_sizes.tolist()
        targets = [_size_pair(size) for size in target_sizes]
        if len(targets) != batch:
            raise ValueError(f"Got {len(targets)} target_sizes for a batch of {batch}")
        if _keeps_aspect_ratio(frames):
            for index, (image_size, target_size) in enumerate(zip(sizes, targets)):
                _refuse_swapped_target(image_size, target_size, index)
    if frames.size_divisor % frames.mask_stride:
        raise ValueError(
            f"size_divisor={frames.size_divisor} must be a multiple of the mask stride {frames.mask_stride} to locate "
            "each image's own frame on the mask grid"
        )
    return class_scores, mask_logits, sizes, targets


def _image_frame(
    frames: ITAOutputFrames, image_size: tuple[int, int], target_size: tuple[int, int], index: int
) -> tuple[int, int]:
    """Image `index`'s own padded frame, after checking its sizes."""
    if min(*image_size, *target_size) < 1:
        raise ValueError(f"Image {index}: image size {image_size} and target size {target_size} must be positive")
    return frames.padded_frame(*image_size, resized=True)


def semantic_inputs(
    frames: ITAOutputFrames,
    class_scores: Tensor,
    mask_logits: Tensor,
    image_size: tuple[int, int],
    target_size: tuple[int, int],
    index: int,
) -> tuple[Tensor, Tensor, tuple[int, int], tuple[int, int], tuple[int, int]]:
    """One image's arguments of the semantic kernels: class probabilities `[Q, K]`, the mask grid of its own
    padded frame `[Q, h, w]`, its size, the frame's size and the target size."""
    frame = _image_frame(frames, image_size, target_size, index)
    grid = _frame_grid(mask_logits, frame, frames.mask_stride, f"Image {index} of size {image_size}")
    class_probs = class_scores.float().softmax(dim=-1)[:, :-1]  # [Q, K]
    return class_probs, grid, image_size, frame, target_size


SemanticResult = Tensor | SemanticSegmentationPostProcessorOutput | dict[str, Any]


def semantic_segmentation(
    frames: ITAOutputFrames,
    outputs: Any,
    target_sizes: Sequence[Sequence[int]] | Tensor | None,
    return_segmentation_scores: bool,
    return_winning_scores: bool,
    masks_first: bool,
    return_scores: bool | None,
) -> list[SemanticResult]:
    """`ITAImageProcessor.post_process_semantic_segmentation`: the outputs checked, then one image at a time."""
    class_scores, mask_logits, image_sizes, targets = checked_outputs(frames, outputs, target_sizes)
    chunk = frames.post_process_chunk_elements
    results: list[SemanticResult] = []
    for index in range(len(image_sizes)):
        arguments = semantic_inputs(
            frames, class_scores[index], mask_logits[index], image_sizes[index], targets[index], index
        )
        scores = winning = None
        if return_segmentation_scores:
            scores = semantic_scores(*arguments, masks_first=masks_first, chunk_elements=chunk)  # [K, H, W]
            winning, labels = scores.max(dim=0)  # the first of tied classes, as argmax
        else:
            labels, winning = semantic_map(
                *arguments,
                masks_first=masks_first,
                winning_scores=bool(return_scores or return_winning_scores),
                chunk_elements=chunk,
            )
        if return_scores:
            results.append({"segmentation": labels, "scores": winning})
        elif return_segmentation_scores or return_winning_scores:
            data: dict[str, Any] = {"segmentation": labels, "segmentation_scores": scores}
            if return_winning_scores:
                data["winning_scores"] = winning
            results.append(SemanticSegmentationPostProcessorOutput(data=data))
        else:
            results.append(labels)
    return results


def query_images(
    frames: ITAOutputFrames, outputs: Any, target_sizes: Sequence[Sequence[int]] | Tensor | None
) -> list[tuple[Tensor, MaskChunks, tuple[int, int]]]:
    """Checked per-image inputs of the panoptic and instance rules: a list of `(log_probs [Q, K+1],
    mask_chunks_for, target_size)`, where `mask_chunks_for(queries)` yields the queries' mask logits at the
    target size a few at a time (`query_mask_logits`)."""
    log_probs, mask_logits, image_sizes, targets = checked_outputs(frames, outputs, target_sizes)
    images: list[tuple[Tensor, MaskChunks, tuple[int, int]]] = []
    for index, (image_size, target_size) in enumerate(zip(image_sizes, targets)):
        frame = _image_frame(frames, image_size, target_size, index)
        _frame_grid(mask_logits, frame, frames.mask_stride, f"Image {index} of size {image_size}")  # checked now
        mask_chunks_for = functools.partial(
            _query_chunks,
            mask_logits[index],
            image_size=image_size,
            frame_size=frame,
            target_size=target_size,
            mask_stride=frames.mask_stride,
            max_elements=frames.post_process_chunk_elements,
        )
        images.append((log_probs[index], mask_chunks_for, target_size))
    return images


def _query_chunks(
    mask_logits: Tensor,
    queries: Tensor,
    *,
    image_size: tuple[int, int],
    frame_size: tuple[int, int],
    target_size: tuple[int, int],
    mask_stride: int,
    max_elements: int,
) -> Iterator[tuple[slice, Tensor]]:
    return query_mask_logits(mask_logits, queries, image_size, frame_size, target_size, mask_stride, max_elements)


def class_id_set(class_ids: Iterable[int] | None, num_classes: int, name: str) -> set[int]:
    """`class_ids` (an iterable of vocabulary indices, or None) as a set of ints, checked."""
    if class_ids is None:
        return set()
    ids = {int(class_id) for class_id in class_ids}
    outside = sorted(class_id for class_id in ids if not 0 <= class_id < num_classes)
    if outside:
        raise ValueError(f"{name} has class ids {outside} outside the vocabulary of {num_classes} classes")
    return ids


def panoptic_segmentation(
    frames: ITAOutputFrames,
    outputs: Any,
    threshold: float,
    mask_threshold: float,
    overlap_mask_area_threshold: float,
    label_ids_to_fuse: Iterable[int] | None,
    target_sizes: Sequence[Sequence[int]] | Tensor | None,
) -> list[dict[str, Any]]:
    """`ITAImageProcessor.post_process_panoptic_segmentation`: arguments and outputs checked, then
    `panoptic_segments` per image."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    if not 0.0 <= overlap_mask_area_threshold <= 1.0:
        raise ValueError(f"overlap_mask_area_threshold must lie in [0, 1], got {overlap_mask_area_threshold}")
    if not 0.0 < mask_threshold < 1.0:
        raise ValueError(f"mask_threshold must lie in (0, 1), got {mask_threshold}")
    images = query_images(frames, outputs, target_sizes)
    stuff_ids = class_id_set(label_ids_to_fuse, images[0][0].shape[-1] - 1, "label_ids_to_fuse")
    results = []
    for log_probs, mask_chunks_for, target_size in images:
        segmentation, segments_info = panoptic_segments(
            log_probs,
            mask_chunks_for,
            target_size,
            threshold,
            mask_threshold,
            overlap_mask_area_threshold,
            stuff_ids,
        )
        results.append({"segmentation": segmentation, "segments_info": segments_info})
    return results


def instance_segmentation(
    frames: ITAOutputFrames,
    outputs: Any,
    threshold: float,
    mask_threshold: float,
    target_sizes: Sequence[Sequence[int]] | Tensor | None,
    return_coco_annotation: bool,
    return_binary_maps: bool,
    top_k: int,
    label_ids_to_fuse: Iterable[int] | None,
) -> list[dict[str, Any]]:
    """`ITAImageProcessor.post_process_instance_segmentation`: arguments and outputs checked, then
    `instance_segments` per image, its masks returned as asked."""
    if return_coco_annotation and return_binary_maps:
        raise ValueError("return_coco_annotation and return_binary_maps cannot both be True")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    if not 0.0 < mask_threshold < 1.0:
        raise ValueError(f"mask_threshold must lie in (0, 1), got {mask_threshold}")
    if not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    images = query_images(frames, outputs, target_sizes)
    stuff_ids = class_id_set(label_ids_to_fuse, images[0][0].shape[-1] - 1, "label_ids_to_fuse")
    results = []
    for log_probs, mask_chunks_for, target_size in images:
        masks, segments_info = instance_segments(
            log_probs, mask_chunks_for, target_size, top_k, threshold, mask_threshold, stuff_ids
        )
        segmentation: Tensor | list[dict[str, Any]]
        if return_binary_maps:
            segmentation = masks
        elif return_coco_annotation:
            segmentation = [binary_mask_to_coco_rle(mask) for mask in masks]
        else:
            segmentation = torch.full(target_size, -1, dtype=torch.long, device=masks.device)
            for index in reversed(range(len(masks))):  # the highest score is painted last, on top
                segmentation[masks[index]] = index
        results.append({"segmentation": segmentation, "segments_info": segments_info})
    return results
