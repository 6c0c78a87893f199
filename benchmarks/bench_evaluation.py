"""Evaluation throughput and peak memory over generated A-150-style splits of 20 and 200 images.

The split is written once in the layout of a prepared ADE20K (`ADEChallengeData2016/images/validation/*.jpg`,
`annotations_detectron2/validation/*.png`, labels 0..149 and 255) with random shapes of random classes, images
of a few sizes. Each split size is evaluated in a fresh process by the evaluation runner (`evaluate_dataset`:
processor at the published 800/1333 resolution, model, post-processing, streaming confusion matrix), with a
small model with random weights (a 0.3 M-parameter ConvNeXt trunk, 2-layer text tower) and the full A-150
vocabulary. What is measured is whether memory stays flat as the split grows, and the loop's throughput, not
the cost of the full-size model (see bench_inference.py for that).

Memory is the process's resident set (Linux high-water mark, `measure.PeakRSS`): its peak over the whole
evaluation loop, absolute and as a rise over the RSS just before the loop (model built, data indexed, vocabulary
encoded). Throughput is images per second of that loop.

    python benchmarks/bench_evaluation.py --threads 2
    python benchmarks/bench_evaluation.py --sizes 20 200 --batch-size 2
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from measure import PeakRSS, machine_description, rss_mib, set_threads
from PIL import Image, ImageDraw

from ita_segmentation.synthetic import toy_clip_config, toy_config

SMALL_CLIP_CONFIG = toy_clip_config(width=32, heads=2)
IMAGE_SIZES = ((375, 500), (480, 640), (512, 512), (600, 450))  # (height, width), ADE20K-like
NUM_CLASSES = 150
IGNORE = 255


def write_split(root, num_images, seed=0):
    """`num_images` image/label pairs of random ellipses and rectangles in the prepared-ADE20K layout."""
    rng = np.random.default_rng(seed)
    image_dir = Path(root, "ADEChallengeData2016/images/validation")
    label_dir = Path(root, "ADEChallengeData2016/annotations_detectron2/validation")
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    for index in range(num_images):
        height, width = IMAGE_SIZES[index % len(IMAGE_SIZES)]
        background = int(rng.integers(NUM_CLASSES))
        image = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(0, 256, 3)))
        label = Image.new("L", (width, height), background)
        draw_image, draw_label = ImageDraw.Draw(image), ImageDraw.Draw(label)
        for _ in range(int(rng.integers(3, 9))):
            x0, y0 = int(rng.integers(0, width - 20)), int(rng.integers(0, height - 20))
            box = (x0, y0, x0 + int(rng.integers(20, width // 2)), y0 + int(rng.integers(20, height // 2)))
            class_id = int(rng.integers(NUM_CLASSES)) if rng.random() > 0.1 else IGNORE
            shape = "ellipse" if rng.random() < 0.5 else "rectangle"
            getattr(draw_image, shape)(box, fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
            getattr(draw_label, shape)(box, fill=class_id)
        noise = rng.integers(-20, 21, size=(height, width, 3))
        pixels = np.clip(np.asarray(image).astype(np.int16) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(image_dir / f"synthetic_{index:05d}.jpg", quality=90)
        label.save(label_dir / f"synthetic_{index:05d}.png")


def worker(args):
    """One evaluation in this process; prints one JSON line."""
    import torch

    from configuration_ita import ITAConfig
    from ita_segmentation.evaluation import benchmark_metadata, load_benchmark
    from ita_segmentation.evaluation.runner import evaluate_dataset
    from modeling_ita import ITAForOpenVocabSegmentation, ITAProcessor

    set_threads(args.threads)
    torch.manual_seed(0)
    config = toy_config(
        width=64,
        clip_config=SMALL_CLIP_CONFIG,
        num_queries=16,
        dominant_category_image_size=32,
        prompt_templates=ITAConfig().prompt_templates,  # the full templates, as the benchmark always used
    )
    model = ITAForOpenVocabSegmentation(config).eval()
    processor = ITAProcessor()
    dataset = load_benchmark("ade150", args.data_dir, max_samples=args.num_images)
    assert len(dataset) == args.num_images
    # Encoded before the loop (the runner then finds it in the model's cache): the loop's time and memory are
    # then those of the images alone, whatever the split size.
    model.encode_vocabulary(benchmark_metadata(dataset)["class_names"])
    before = rss_mib()
    peak = PeakRSS()
    start = time.perf_counter()
    evaluation = evaluate_dataset(model, processor, dataset, batch_size=args.batch_size, progress=False)
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "num_images": evaluation.num_images,
                "seconds": seconds,
                "rss_before_mib": before,
                "peak_mib": peak.peak_mib(),
                "peak_rise_mib": peak.delta_mib(),
                "peak_resettable": peak.resettable,
                "miou": evaluation.scores["mean_iou"],
            }
        )
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 200], help="split sizes (images)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--data-dir", default=None, help="where to write the split (default: a temporary folder)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--num-images", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return
    print(machine_description(args.threads))
    with tempfile.TemporaryDirectory() as temporary:
        data_dir = args.data_dir or temporary
        start = time.perf_counter()
        write_split(data_dir, max(args.sizes))
        print(f"wrote {max(args.sizes)} image/label pairs in {time.perf_counter() - start:.1f} s (sizes {IMAGE_SIZES})")
        results = {}
        for size in args.sizes:
            command = [
                sys.executable,
                __file__,
                "--worker",
                "--data-dir",
                data_dir,
                "--num-images",
                str(size),
                "--threads",
                str(args.threads),
                "--batch-size",
                str(args.batch_size),
            ]
            completed = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ))
            if completed.returncode:
                sys.stderr.write(completed.stderr)
                raise SystemExit(f"the evaluation of {size} images failed")
            results[size] = json.loads(completed.stdout.strip().splitlines()[-1])
            r = results[size]
            print(
                f"{size:5d} images: {r['seconds']:7.1f} s = {r['num_images'] / r['seconds']:.2f} images/s; peak RSS "
                f"{r['peak_mib']:.0f} MiB, rise over the loop's start {r['peak_rise_mib']:.0f} MiB "
                f"(RSS before {r['rss_before_mib']:.0f} MiB); mIoU {100 * r['miou']:.2f} (random weights)"
            )
    small, large = min(args.sizes), max(args.sizes)
    if small != large:
        a, b = results[small], results[large]
        print(
            f"\nRATIO peak RSS {large}/{small} images: {b['peak_mib'] / a['peak_mib']:.3f} (target <= 1.10); "
            f"peak rise {large}/{small}: {b['peak_rise_mib'] / max(a['peak_rise_mib'], 1e-9):.3f}"
        )
        print(
            f"RATIO throughput {large}/{small} images: "
            f"{(b['num_images'] / b['seconds']) / (a['num_images'] / a['seconds']):.2f}"
        )


if __name__ == "__main__":
    main()
