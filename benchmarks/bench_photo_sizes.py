"""Inference on photos of real sizes: the label map at the photo's own size, for several photo and vocabulary sizes.

The model always runs at the processor's resolution (short side 800), whatever the photo; the post-processing
makes the label map at the photo's size, so its cost is what grows with the photo. For each vocabulary
(`--vocabularies`, encoded once per vocabulary before timing) and each photo size (`--photo-sizes`), one
process builds the full-size ITA once (random weights, `--seed`) and times alternately, `--repeats` times after
a warm-up: the CLIP trunk alone (the floor) and end-to-end (processor + model +
`post_process_semantic_segmentation(target_sizes=[photo size])`), with the post-processing's own time from a
timer around it. One row per (vocabulary, photo): medians, the ratio end-to-end / trunk, the peak memory one
end-to-end inference adds, and the share of the mask grid whose class the post-processing had to compute
pixel by pixel ("undecided": the label boundaries; the rest is decided per grid cell, `postprocessing_ita._grid_decisions`).

The photo is random noise, as in `bench_inference.py`; with random weights the label map has the boundaries the
"undecided" column shows, which is where the post-processing's cost goes. `--check` also computes the plain
formula (`postprocessing_ita.semantic_map_reference`: every class's score map resized to the photo, then arg-max) where its
`classes x photo` float32 tensor fits in `--check-max-gib`, and counts the pixels whose labels differ.

    python benchmarks/bench_photo_sizes.py --repeats 3
    python benchmarks/bench_photo_sizes.py --photo-sizes 3000x4000 --vocabularies ade847 --repeats 3
    python benchmarks/bench_photo_sizes.py --device cuda --check          # GPU rows (timings synchronised)

On a GPU the timers synchronise the device around each timed block, and peak memory is the CUDA allocator's
peak (`torch.cuda.max_memory_allocated`) above what was allocated before the block; on the CPU it is the
resident set's rise (`measure.PeakRSS`).
"""

import argparse
import contextlib
import functools
import time
from pathlib import Path

import numpy as np
import torch
from bench_inference import load_vocabulary
from measure import PeakRSS, StageTimer, machine_description, set_threads

import image_processing_ita
import postprocessing_ita
from configuration_ita import ITAConfig
from ita_segmentation.synthetic import draw_synthetic_scene
from modeling_ita import ITAForOpenVocabSegmentation, ITAProcessor
from postprocessing_ita import _grid_decisions, _undecided_share, semantic_scores_reference


def photo_size(value):
    try:
        height, width = (int(part) for part in value.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH (e.g. 3000x4000), got {value!r}") from None
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"photo size must be positive, got {value!r}")
    return height, width


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--photo-sizes",
        type=photo_size,
        nargs="+",
        metavar="HxW",
        default=[(600, 800), (1080, 1920), (3000, 4000), (4000, 6000)],
    )
    parser.add_argument(
        "--vocabularies",
        nargs="+",
        default=["ade150", "ade847"],
        help="class lists in ita_segmentation/evaluation/vocabularies",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each (after one warm-up run)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="bfloat16: autocast around the model (not the post-processing, which is float32)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--image",
        choices=("noise", "scene"),
        default="noise",
        help="noise: uniform random pixels (as bench_inference.py); scene: a generated scene of "
        "shapes on one or two backgrounds (ita_segmentation.synthetic)",
    )
    parser.add_argument(
        "--spread-heads",
        action="store_true",
        help="redraw the decoder's mask and class heads with std 1: at their init scale one class "
        "wins nearly everywhere (no boundaries), with this the label map has many",
    )
    parser.add_argument(
        "--vocabulary-cache-dir",
        default=None,
        help="a folder for the encoded vocabularies (one file per vocabulary and seed), read by "
        "later runs to skip the text encoding",
    )
    parser.add_argument(
        "--post-processing",
        choices=("default", "bands"),
        default="default",
        help="bands: force the row-band computation of every class (the path the default takes "
        "when the masks are resized first), to compare with the boundary-following one",
    )
    parser.add_argument(
        "--save-inputs",
        metavar="DIR",
        default=None,
        help="write each row's post-processing inputs (class probabilities, mask grid, image and "
        "frame sizes) to DIR/VOCABULARY-HxW.pt, for bench_semantic_map.py --inputs; DIR must not "
        "hold such a file already",
    )
    parser.add_argument("--check", action="store_true", help="compare the labels with the plain formula")
    parser.add_argument("--check-max-gib", type=float, default=8.0)
    return parser.parse_args(argv)


def save_inputs(path, class_probs, grid, image_size, frame_size):
    """One image's post-processing inputs, as `bench_semantic_map.py --inputs` reads them (never over a file)."""
    if path.exists():
        raise SystemExit(f"{path} exists: give --save-inputs a folder without it")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "class_probs": class_probs.cpu(),
            "mask_logits": grid.float().cpu().contiguous(),
            "image_size": list(image_size),
            "frame_size": list(frame_size),
        },
        path,
    )
    print(f"post-processing inputs written to {path}", flush=True)


class PeakMemory:
    """The peak memory a block adds: the CUDA allocator's on a GPU, the resident set's on the CPU (MiB)."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        self.rss = None if self.cuda else PeakRSS()
        self.reset()

    def reset(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            self.rss.reset()

    def delta_mib(self):
        if self.cuda:
            torch.cuda.synchronize()
            return (torch.cuda.max_memory_allocated() - self.start) / 2**20
        return self.rss.delta_mib()


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    set_threads(args.threads)
    torch.manual_seed(args.seed)
    print(machine_description(args.threads))
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(device)}")
    print(
        f"dtype {args.dtype}, repeats {args.repeats}, image {args.image}, spread heads {args.spread_heads}, "
        f"post-processing {args.post_processing}",
        flush=True,
    )

    if args.post_processing == "bands":
        image_processing_ita.semantic_map = postprocessing_ita.banded_semantic_map  # the processor's name for it
    start = time.perf_counter()
    model = ITAForOpenVocabSegmentation(ITAConfig()).eval()
    if args.spread_heads:
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if parameter.ndim > 1 and name.startswith(("decoder.mask_embed", "decoder.class_embed")):
                    parameter.normal_(0.0, 1.0)
    model.to(device)
    processor = ITAProcessor()
    print(f"model built in {time.perf_counter() - start:.1f} s", flush=True)
    autocast = functools.partial(torch.autocast, device.type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")
    rng = np.random.default_rng(args.seed)
    rows = []
    for vocabulary_name in args.vocabularies:
        cache = (
            Path(args.vocabulary_cache_dir) / f"{vocabulary_name}-ita-seed{args.seed}.pt"
            if args.vocabulary_cache_dir
            else None
        )
        vocabulary = load_vocabulary(model, vocabulary_name, cache, device)
        for height, width in args.photo_sizes:
            if args.image == "scene":
                image = draw_synthetic_scene(rng, height, width)[0]
            else:
                image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
            clock = StageTimer(torch.cuda.synchronize if device.type == "cuda" else None)
            state = {}

            def end_to_end(image=image, height=height, width=width, timed=True):
                with clock("preprocess") if timed else contextlib.nullcontext():
                    inputs = processor(images=image, return_tensors="pt").to(device)
                with clock("model") if timed else contextlib.nullcontext(), torch.no_grad(), autocast():
                    outputs = model(**inputs, vocabulary=vocabulary)
                with clock("post-processing") if timed else contextlib.nullcontext():
                    labels = processor.post_process_semantic_segmentation(outputs, target_sizes=[(height, width)])[0]
                state["outputs"], state["labels"] = outputs, labels
                return labels

            pixel_values = processor(images=image, return_tensors="pt")["pixel_values"].to(device)

            def trunk_alone():
                with torch.no_grad(), autocast():
                    return model.backbone.extract_features(pixel_values)

            trunk_alone()
            end_to_end(timed=False)  # warm-up
            clock.synchronize()
            for _ in range(args.repeats):
                with clock("trunk"):
                    trunk_alone()
                with clock("end-to-end"):
                    end_to_end()
            trunk, total = clock.median("trunk"), clock.median("end-to-end")
            memory = PeakMemory(device)
            end_to_end(timed=False)
            peak = memory.delta_mib()
            outputs, labels = state["outputs"], state["labels"]
            # The post-processing's own inputs (its class scores, the image's mask grid and frame).
            class_logits, mask_logits, image_sizes, target_sizes = postprocessing_ita.checked_outputs(
                processor.image_processor, outputs, [(height, width)]
            )
            class_probs, grid, image_size, frame_size, _ = postprocessing_ita.semantic_inputs(
                processor.image_processor, class_logits[0], mask_logits[0], image_sizes[0], target_sizes[0], 0
            )
            if args.save_inputs:
                save_inputs(
                    Path(args.save_inputs) / f"{vocabulary_name}-{height}x{width}.pt",
                    class_probs,
                    grid,
                    image_size,
                    frame_size,
                )
            decisions = _grid_decisions(
                class_probs, grid.float(), processor.image_processor.post_process_chunk_elements
            )
            undecided = _undecided_share(decisions, image_size, frame_size)
            row = {
                "vocabulary": vocabulary_name,
                "classes": len(vocabulary.class_names),
                "photo": f"{height}x{width}",
                "trunk": trunk,
                "end_to_end": total,
                "post": clock.median("post-processing"),
                "model": clock.median("model"),
                "preprocess": clock.median("preprocess"),
                "ratio": total / trunk,
                "peak_mib": peak,
                "undecided": undecided,
                "runs": " ".join(
                    f"{t:.2f}/{e:.2f}" for t, e in zip(clock.samples["trunk"], clock.samples["end-to-end"])
                ),
            }
            if args.check:
                dense_gib = len(vocabulary.class_names) * height * width * 4 / 2**30
                if dense_gib <= args.check_max_gib:
                    scores = semantic_scores_reference(class_probs, grid, image_size, frame_size, (height, width))
                    expected = scores.argmax(0)
                    different = expected != labels
                    row["check"] = f"{int(different.sum())} of {height * width} pixels differ"
                    if different.any():  # how close the plain formula's two best classes are there
                        best_two = scores[:, different].topk(2, dim=0).values
                        margin = ((best_two[0] - best_two[1]) / best_two[0].abs()).max().item()
                        row["check"] += f" (there its two best classes are at most {margin:.1e} apart, relative)"
                    del scores, expected, different
                else:
                    row["check"] = f"not checked ({dense_gib:.1f} GiB > --check-max-gib)"
            rows.append(row)
            print(
                f"{vocabulary_name} {height}x{width}: trunk {trunk:.3f} s, end-to-end {total:.3f} s, post-processing "
                f"{row['post']:.3f} s, RATIO {row['ratio']:.2f}, peak +{peak:.0f} MiB, undecided grid "
                f"{undecided:.1%}, runs trunk/e2e {row['runs']}"
                + (f"; check: {row['check']}" if "check" in row else ""),
                flush=True,
            )
            state.clear()
            del outputs, labels
            if device.type == "cuda":
                torch.cuda.empty_cache()

    unit = "MiB (CUDA allocator)" if device.type == "cuda" else "MiB (resident set)"
    print(
        f"\n| photo | classes | preprocess | model | post-processing | trunk alone | end-to-end | ratio | peak rise, {unit} | undecided grid |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['photo']} | {row['classes']} | {row['preprocess']:.2f} | {row['model']:.2f} | {row['post']:.2f} | "
            f"{row['trunk']:.2f} | {row['end_to_end']:.2f} | **{row['ratio']:.2f}** | {row['peak_mib']:.0f} | "
            f"{row['undecided']:.1%} |"
        )


if __name__ == "__main__":
    main()
