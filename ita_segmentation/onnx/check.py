"""The check of an export against PyTorch: the exported graphs (an `ITAOnnxModel`) and the PyTorch model on a sample,
output by output, within `Tolerances`; near-ties that rounding may flip (the ranking, the decoder's attention masks,
mask pooling, the labels) are told apart from differences of computation."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import ITAExportMismatchError
from .graph import trunk_stride
from .options import DEFAULT_ATOL, DEFAULT_RTOL
from .replay import attention_masks_given, graph_attention_masks

__all__ = [
    "CHECK_CLASS_NAMES",
    "CHECK_IMAGE_SIZE",
    "DEFAULT_TOLERANCES",
    "Tolerances",
    "check_export",
    "pooling_flips",
    "top_two_margin",
]

# The vocabulary the check encodes and segments with (ITA's 20 text-query slots cycle through its candidates).
CHECK_CLASS_NAMES = (
    "wall",
    "floor",
    "ceiling",
    "sky",
    "tree",
    "grass",
    "road",
    "person",
    "car",
    "building",
    "sofa,couch",
    "table",
    "chair",
    "bed,cot",
    "water,sea",
)
CHECK_IMAGE_SIZE = (240, 320)


@dataclass(frozen=True)
class Tolerances:
    """What "the export matches PyTorch" means. The defaults leave room for float32 rounding through the full-size
    model (measured on a 600x800 input: up to 1.1e-3 in the class logits, 0.07% of their largest value, and 7.2e-3 in
    the mask logits, 0.1%; about 3e-6 on the tiny test models), and catch what a wrong graph does (NaN, -inf,
    another resize or tie-break: differences of the order of the values). An output matches when `max |onnx - torch| <= atol + rtol *
    max |torch|` over the output; text embeddings likewise; the dominant categories when they are the same, or
    differ only between candidates whose PyTorch probabilities are within `ranking_atol` (a near-tie that rounding
    may flip: the other outputs are then compared with PyTorch run on the graph's choice); when the class or mask
    logits differ beyond the tolerance, PyTorch is run again on the graph's decoder attention masks
    (`graph_attention_masks`), which may differ only where PyTorch's mask logit lies within the mask logits'
    tolerance of 0 (random full-size FC-CLIP weights leave hundreds of such cells, and a flipped cell moves its
    query far beyond rounding); the out-of-vocabulary logits and ensemble of the queries whose mask the classifier
    binarises differently (a cell within rounding of 0, `pooling_flips`) are left out; label maps where PyTorch's
    top two class scores differ by more than `label_margin`."""

    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    ranking_atol: float = 1e-5
    label_margin: float = 1e-3

    def allowed(self, expected: Any) -> float:
        """The largest `|onnx - torch|` allowed for an output whose PyTorch values are `expected`."""
        expected = torch.as_tensor(expected)
        return self.atol + self.rtol * (float(expected.abs().max()) if expected.numel() else 0.0)


DEFAULT_TOLERANCES = Tolerances()


def top_two_margin(processor: Any, outputs: Any, index: int, target_size: Sequence[int]) -> Tensor:
    """`[H_t, W_t]`: how far apart the best two class scores of image `index` are at each pixel, in FC-CLIP's
    semantic scores (the plain formula that `post_process_semantic_segmentation` computes); infinite with one
    class. Where it is within rounding, the label may flip between two computations of the same model."""
    image_size = tuple(int(v) for v in outputs.image_sizes[index])
    frame = processor.image_processor.padded_frame(image_size[0], image_size[1], resized=True)
    mask_logits = outputs.masks_queries_logits[index][None].float()
    masks = F.interpolate(mask_logits, size=frame, mode="bilinear", align_corners=False)[0]
    masks = masks[:, : image_size[0], : image_size[1]].sigmoid()
    probabilities = outputs.ensemble_log_probs[index].float().softmax(-1)[:, :-1]
    scores = torch.einsum("qk,qhw->khw", probabilities, masks)
    scores = F.interpolate(scores[None], size=tuple(target_size), mode="bilinear", align_corners=False)[0]
    if scores.shape[0] == 1:
        return torch.full(scores.shape[1:], float("inf"))
    top_two = scores.topk(2, dim=0).values
    return top_two[0] - top_two[1]


def pooling_flips(model: Any, pixel_values: Tensor, got: Any, expected: Any) -> Tensor:
    """`[B, Q]` the queries whose mask the out-of-vocabulary classifier binarises differently in `got` and
    `expected` (model outputs): it resizes the mask logits to the CLIP features' size and pools over `logit > 0`.

    A mask logit within rounding of 0 can land on either side, and one such cell moves the query's pooled CLIP
    feature, hence its out-of-vocabulary logits and ensemble, far beyond rounding (measured: 3.4e-6 from 0 at one
    cell moved a query's out-of-vocabulary logit by 0.017). How far the flipped cells are from 0 is bounded by the
    comparison of the mask logits themselves (bilinear resizing does not widen their difference)."""
    stride = trunk_stride(model)
    size = (pixel_values.shape[-2] // stride, pixel_values.shape[-1] // stride)
    got_masks, expected_masks = (
        F.interpolate(outputs.masks_queries_logits.float(), size=size, mode="bilinear", align_corners=False) > 0
        for outputs in (got, expected)
    )
    return (got_masks != expected_masks).flatten(2).any(dim=-1)


def _beyond(got: Any, expected: Any, tolerances: Tolerances) -> bool:
    """Whether an output of the same shape differs beyond `tolerances` (NaN does; `_compare` reports shapes)."""
    got, expected = torch.as_tensor(got).double(), torch.as_tensor(expected).double()
    if got.shape != expected.shape or not got.numel():
        return False
    return not float((got - expected).abs().max()) <= tolerances.allowed(expected)


def _compare(
    name: str,
    got: Any,
    expected: Any,
    tolerances: Tolerances,
    report: dict[str, Any],
    problems: list[str],
    keep: Tensor | None = None,
) -> None:
    """Compare one output (the `[B, Q]` entries of `keep` only, when given) and note the result."""
    got, expected = torch.as_tensor(got).double(), torch.as_tensor(expected).double()
    if got.shape != expected.shape:
        problems.append(f"{name}: shape {tuple(got.shape)} instead of PyTorch's {tuple(expected.shape)}")
        return
    if keep is not None:
        got, expected = got[keep], expected[keep]
    difference = float((got - expected).abs().max()) if got.numel() else 0.0
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    bound = tolerances.allowed(expected)
    report[name] = {"max_abs_diff": difference, "max_abs_pytorch": scale, "allowed": bound}
    if not difference <= bound:  # NaN fails too
        problems.append(f"{name}: max |onnx - pytorch| = {difference:.3g} > {bound:.3g} allowed")


@torch.no_grad()
def check_export(
    model: Any,
    processor: Any,
    onnx_model: Any,
    class_names: Sequence[str] = CHECK_CLASS_NAMES,
    image: Any = None,
    tolerances: Tolerances = DEFAULT_TOLERANCES,
) -> dict[str, Any]:
    """Compare `onnx_model` (an `ITAOnnxModel`) with the PyTorch `model` on a sample: the text tower on
    `class_names`, the segmentation graph on `image` (default: a generated 240x320 scene) through `processor`,
    and the label maps of `post_process_semantic_segmentation`. Returns the numbers as a dict; raises
    `ITAExportMismatchError` listing every difference beyond `tolerances`."""
    from ..synthetic import draw_synthetic_scene

    report: dict[str, Any] = {"tolerances": tolerances.__dict__}
    problems: list[str] = []
    expected_vocabulary = model.encode_vocabulary(list(class_names))
    got_vocabulary = onnx_model.encode_vocabulary(list(class_names))
    for name in ("text_classifier", "name_embeddings"):
        if getattr(expected_vocabulary, name) is not None:
            _compare(
                f"text_encoder:{name}",
                getattr(got_vocabulary, name),
                getattr(expected_vocabulary, name),
                tolerances,
                report,
                problems,
            )

    if image is None:
        image = draw_synthetic_scene(np.random.default_rng(0), *CHECK_IMAGE_SIZE)[0]
    inputs = processor(images=image, return_tensors="pt")
    inputs = {key: value for key, value in inputs.items() if key != "pixel_mask"}
    report["sample"] = {"image": list(np.asarray(image).shape[:2]), "input": list(inputs["pixel_values"].shape)}
    got = onnx_model(**inputs, vocabulary=expected_vocabulary)  # the same vocabulary: the graph alone is compared
    expected = model(**inputs, vocabulary=expected_vocabulary)
    choices = {}  # the graph's choices that PyTorch is run on, when they differ by rounding
    if got.dominant_category_ids is not None and not torch.equal(
        got.dominant_category_ids, expected.dominant_category_ids
    ):
        probabilities = model.dominant_categories.ranking_probabilities(
            model.backbone,
            inputs["pixel_values"],
            inputs["image_sizes"],
            expected_vocabulary.name_embeddings,
            views=inputs.get("dominant_category_pixel_values"),
        )
        gap = float(
            (
                probabilities.gather(1, got.dominant_category_ids)
                - probabilities.gather(1, expected.dominant_category_ids)
            )
            .abs()
            .max()
        )
        report["dominant_categories"] = {"equal": False, "max_probability_gap": gap}
        if gap > tolerances.ranking_atol:
            problems.append(
                f"dominant categories: {got.dominant_categories} instead of PyTorch's {expected.dominant_categories} "
                f"(probabilities {gap:.3g} apart)"
            )
        choices["dominant_category_ids"] = got.dominant_category_ids
        expected = model(**inputs, vocabulary=expected_vocabulary, **choices)
    elif got.dominant_category_ids is not None:
        report["dominant_categories"] = {"equal": True}
    if any(
        _beyond(getattr(got, name), getattr(expected, name), tolerances)
        for name in ("class_queries_logits", "masks_queries_logits")
    ):
        # A decoder attention mask cell within rounding of the 0.5 threshold may land on either side: PyTorch is then
        # run on the graph's masks, which may differ from its own only where its logit is within the mask logits'
        # tolerance of 0; the cells that differ are counted.
        masks = graph_attention_masks(onnx_model, inputs, expected_vocabulary)
        near_zero = tolerances.allowed(expected.masks_queries_logits)
        with attention_masks_given(masks, near_zero) as attention_flips:
            expected = model(**inputs, vocabulary=expected_vocabulary, **choices)
        report["attention_mask_flips"] = attention_flips
        if attention_flips["far"]:
            problems.append(
                f"decoder attention masks: {attention_flips['far']} cells blocked differently where PyTorch's mask "
                f"logit is further than {near_zero:.3g} from 0"
            )
    for name in ("class_queries_logits", "masks_queries_logits"):
        _compare(name, getattr(got, name), getattr(expected, name), tolerances, report, problems)
    # The out-of-vocabulary logits and the ensemble of queries whose pooled mask flips at a near-zero cell are not
    # compared (their masks are, above); the label maps below still are.
    flipped = pooling_flips(model, inputs["pixel_values"], got, expected)
    report["pooling_flips"] = {"queries": int(flipped.sum()), "of": int(flipped.numel())}
    for name in ("out_vocabulary_logits", "ensemble_log_probs"):
        _compare(name, getattr(got, name), getattr(expected, name), tolerances, report, problems, keep=~flipped)

    target = tuple(np.asarray(image).shape[:2])
    got_labels = processor.post_process_semantic_segmentation(got, target_sizes=[target])[0]
    expected_labels = processor.post_process_semantic_segmentation(expected, target_sizes=[target])[0]
    clear = top_two_margin(processor, expected, 0, target) > tolerances.label_margin
    differ = (got_labels != expected_labels) & clear
    report["labels"] = {"pixels": int(got_labels.numel()), "compared": int(clear.sum()), "different": int(differ.sum())}
    if differ.any():
        problems.append(f"label maps: {int(differ.sum())} of {int(clear.sum())} clearly decided pixels differ")
    if problems:
        raise ITAExportMismatchError("The exported graphs do not match PyTorch: " + "; ".join(problems))
    return report
