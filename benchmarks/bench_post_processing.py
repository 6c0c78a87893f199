"""Semantic post-processing at full size, before and after computing it in bands of output rows.

Inputs shaped like the full-size model's outputs for one 600x800 image (800x1067 after the processor, padded
to 800x1088): 200 queries, A-150 (150 classes + void), mask logits on the 200x272 stride-4 grid, resized back
to 600x800. Random logits (the cost does not depend on their values). The previous implementation (kept
below as the baseline) upsampled chunks of whole masks and recomputed them for every chunk of classes; the
current one (`ITAImageProcessor.post_process_semantic_segmentation`) works in bands of output rows. Both are
timed alternately in one process, for both orders of FC-CLIP's `sem_seg_postprocess_before_inference`, with
the peak resident memory each adds, the label agreement and the largest score difference.

    python benchmarks/bench_post_processing.py --threads 2 --repeats 3
    python benchmarks/bench_post_processing.py --chunk-elements 1048576 4194304 16777216
"""

import argparse
import math

import torch
import torch.nn.functional as F
from measure import PeakRSS, alternate, machine_description, set_threads

from image_processing_ita import ITAImageProcessor


def class_chunked_semantic_map(
    class_logits, mask_logits, image_size, target_size, masks_first, budget=2**26, size_divisor=32
):
    """The previous post-processing of one image (labels, scores): whole masks upsampled to the padded frame
    in chunks of queries, a sigmoid, resized to the target and summed per class, for chunks of classes (each
    class chunk upsampling every mask again unless all masks fit the budget at once)."""
    height, width = image_size
    frame_height = math.ceil(height / size_divisor) * size_divisor
    frame_width = math.ceil(width / size_divisor) * size_divisor
    class_probs = class_logits.float().softmax(dim=-1)[:, :-1]
    mask_logits = mask_logits[:, : frame_height // 4, : frame_width // 4].float()
    num_queries, num_classes = class_probs.shape
    target_area = target_size[0] * target_size[1]

    def resize(maps):
        if tuple(maps.shape[-2:]) == tuple(target_size):
            return maps
        return F.interpolate(maps, size=target_size, mode="bilinear", align_corners=False)

    def sigmoid_masks(start, stop):
        masks = F.interpolate(
            mask_logits[None, start:stop], size=(frame_height, frame_width), mode="bilinear", align_corners=False
        )[:, :, :height, :width]
        masks = resize(masks).sigmoid() if masks_first else resize(masks.sigmoid())
        return masks[0].flatten(1)

    query_chunk = max(1, budget // max(frame_height * frame_width, target_area))
    cache = {} if num_queries * target_area <= budget else None
    best_scores = torch.full((target_area,), float("-inf"))
    best_labels = torch.zeros((target_area,), dtype=torch.long)
    class_chunk = max(1, budget // target_area)
    for class_start in range(0, num_classes, class_chunk):
        class_stop = min(class_start + class_chunk, num_classes)
        scores = torch.zeros((class_stop - class_start, target_area))
        for query_start in range(0, num_queries, query_chunk):
            query_stop = min(query_start + query_chunk, num_queries)
            if cache is not None and query_start in cache:
                masks = cache[query_start]
            else:
                masks = sigmoid_masks(query_start, query_stop)
                if cache is not None:
                    cache[query_start] = masks
            scores.addmm_(class_probs[query_start:query_stop, class_start:class_stop].T, masks)
        chunk_scores, chunk_labels = scores.max(dim=0)
        better = chunk_scores > best_scores
        best_scores = torch.where(better, chunk_scores, best_scores)
        best_labels = torch.where(better, chunk_labels + class_start, best_labels)
    return best_labels.view(target_size), best_scores.view(target_size)


def peak_rise(function):
    peak = PeakRSS()
    function()
    return peak.delta_mib()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--classes", type=int, default=150)
    parser.add_argument(
        "--chunk-elements",
        type=int,
        nargs="+",
        default=[ITAImageProcessor.post_process_chunk_elements],
        help="post_process_chunk_elements values to time for the current implementation",
    )
    args = parser.parse_args(argv)
    set_threads(args.threads)
    print(machine_description(args.threads))

    generator = torch.Generator().manual_seed(0)
    image_size, target_size = (800, 1067), (600, 800)
    outputs = {
        "class_queries_logits": torch.randn(1, args.queries, args.classes + 1, generator=generator) * 3,
        "masks_queries_logits": torch.randn(1, args.queries, 200, 272, generator=generator) * 5,
        "image_sizes": torch.tensor([image_size]),
    }
    processor = ITAImageProcessor()
    print(f"{args.queries} queries, {args.classes} classes, mask grid 200x272, image {image_size} -> {target_size}")

    for masks_first in (False, True):

        def previous():
            return class_chunked_semantic_map(
                outputs["class_queries_logits"][0],
                outputs["masks_queries_logits"][0],
                image_size,
                target_size,
                masks_first,
            )

        def current_with(budget):
            def current():
                processor.post_process_chunk_elements = budget
                result = processor.post_process_semantic_segmentation(
                    outputs,
                    target_sizes=[target_size],
                    return_winning_scores=True,
                    sem_seg_postprocess_before_inference=masks_first,
                )[0]
                return result.segmentation, result.winning_scores

            return current

        functions = {"previous": previous}
        functions.update({f"bands, {budget} elements": current_with(budget) for budget in args.chunk_elements})
        times = alternate(functions, args.repeats)
        reference_labels, reference_scores = previous()
        print(f"\nsem_seg_postprocess_before_inference={masks_first} (median s, peak RSS rise):")
        for name, function in functions.items():
            labels, scores = function()
            print(
                f"  {name:<28}{times[name]:7.3f} s  RATIO previous/this {times['previous'] / times[name]:5.2f}  "
                f"peak +{peak_rise(function):5.0f} MiB  labels agree {(labels == reference_labels).float().mean():.6f}  "
                f"max score diff {(scores - reference_scores).abs().max():.1e}"
            )


if __name__ == "__main__":
    main()
