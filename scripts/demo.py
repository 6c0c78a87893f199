#!/usr/bin/env python
"""`make demo`: train a tiny ITA end to end on generated shapes, with no download, and segment new images.

Run again, it replaces the results of the earlier run in its output folder, and says so.

1. Generates scenes of coloured shapes on textured backgrounds (`ita_segmentation.synthetic`): a training set and
   held-out scenes.
2. Builds a tiny ITA (a random-init, frozen toy CLIP and a small decoder) and trains it with the logic of
   `scripts/train.py` (`ita_segmentation.training.build_trainer`: large-scale jitter, FC-CLIP's loss, optimiser
   groups and step schedule; a higher learning rate than the paper's, for a run of a minute).
3. Reports the mIoU of the untrained and the trained model on the held-out scenes.
4. Saves the model and its processor to `<output>/model` (loadable with `AutoModel`/`AutoProcessor` after
   `import modeling_ita`), and segments held-out images with the `ita-segment` command into
   `<output>/segmentations` (overlays, label maps, JSON), next to their ground truth in `<output>/ground_truth`.

The result is a toy: its CLIP has random weights and has never seen a real image. It shows the pipeline,
not the model's quality.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers.utils import logging as transformers_logging  # noqa: E402

from ita_cli import segment as ita_segment  # noqa: E402
from ita_segmentation.apps.visualization import overlay  # noqa: E402
from ita_segmentation.synthetic import SYNTHETIC_CLASS_NAMES, toy_clip_config, toy_config  # noqa: E402
from ita_segmentation.training import (  # noqa: E402
    ITADataArguments,
    ITAModelArguments,
    ITATrainingArguments,
    build_trainer,
)

NOTICE = (
    "This demo model is a toy: a tiny ITA whose frozen CLIP has random weights, trained for 300 steps (a minute or "
    "two on a 2-core CPU) on generated shapes. It shows the training and inference pipeline, not ITA's quality on "
    "real images."
)

# A toy CLIP: timm's `test_convnext` trunk (0.27 M parameters) and a 2-layer text tower, random and frozen.
DEMO_CLIP_CONFIG = toy_clip_config(width=64, heads=4)


def demo_config():
    """ITA at toy size: 4 dominant-category text queries + 12 learnable queries, no decoder self-attention."""
    return toy_config(
        width=64,
        clip_config=DEMO_CLIP_CONFIG,
        num_queries=12,
        dominant_category_image_size=64,
        train_num_points=256,
        train_vocabulary=list(SYNTHETIC_CLASS_NAMES),
    )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path("demo_output"), help="output folder (default: demo_output)")
    parser.add_argument("--steps", type=int, default=300, help="training steps (default: 300)")
    parser.add_argument("--batch-size", type=int, default=8, help="training images per step (default: 8)")
    parser.add_argument("--learning-rate", type=float, default=2e-3, help="peak learning rate (default: 2e-3)")
    parser.add_argument("--image-size", type=int, default=128, help="side of the generated scenes (default: 128)")
    parser.add_argument("--train-images", type=int, default=256, help="generated training scenes (default: 256)")
    parser.add_argument("--eval-images", type=int, default=48, help="held-out scenes for mIoU (default: 48)")
    parser.add_argument("--samples", type=int, default=6, help="held-out scenes to segment with ita-segment")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for torch (default: 1; the toy model's small operations gain little from more, and one "
        "thread does not stall when other programs keep the cores busy)",
    )
    return parser.parse_args(argv)


def build_demo_trainer(args):
    args.output.mkdir(parents=True, exist_ok=True)
    config_path = args.output / "demo_config.json"
    demo_config().to_json_file(config_path)
    size = args.image_size
    data_args = ITADataArguments(
        dataset_layout="synthetic",
        eval_split="validation",
        synthetic_num_train_images=args.train_images,
        synthetic_num_eval_images=args.eval_images,
        synthetic_image_size=size,
        # Large-scale jitter at the scenes' scale (the COCO recipe crops 1024 at scales 0.1-2.0).
        crop_size=size,
        min_scale=0.5,
        max_scale=1.5,
        eval_shortest_edge=size,
        eval_longest_edge=2 * size,
    )
    training_args = ITATrainingArguments(
        output_dir=str(args.output / "run"),
        use_cpu=True,
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=16,
        learning_rate=args.learning_rate,
        logging_steps=max(1, args.steps // 6),
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=args.seed,
    )
    return build_trainer(ITAModelArguments(config_path=str(config_path)), data_args, training_args)


def write_samples(trainer, args):
    """Held-out scenes as PNG files (inputs of `ita-segment`) and their ground-truth overlays."""
    rows = trainer.eval_dataset.dataset
    samples, truth = args.output / "samples", args.output / "ground_truth"
    samples.mkdir(exist_ok=True)
    truth.mkdir(exist_ok=True)
    for stale in list(samples.iterdir()) + list(truth.iterdir()):  # an earlier demo's (announced in `main`)
        stale.unlink()
    for index in range(min(args.samples, len(rows))):
        row = rows[index]
        stem = Path(row["file_name"]).stem
        row["image"].save(samples / f"{stem}.png")
        overlay(row["image"], np.asarray(row["label"]), list(SYNTHETIC_CLASS_NAMES)).save(truth / f"{stem}_truth.png")
    return samples


DEMO_MARKER = ".ita-demo"  # written first into the demo's folder: an interrupted demo's folder is its own too


def _is_demo_folder(folder):
    """Whether `folder` holds an earlier demo's results (its marker, or its results.json with the demo's notice)."""
    if (folder / DEMO_MARKER).is_file():
        return True
    try:
        results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(results, dict) and results.get("notice") == NOTICE


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    transformers_logging.set_verbosity_error()
    start = time.perf_counter()
    print(NOTICE, flush=True)
    if args.output.exists() and not args.output.is_dir():
        print(f"demo: error: --output {args.output} is a file, not a folder", file=sys.stderr)
        return 2
    if args.output.is_dir() and any(args.output.iterdir()):
        # A second `make demo` replaces the first one's results, and says so; a folder the demo did not write
        # (no results.json of its own) is never emptied.
        if not _is_demo_folder(args.output):
            print(
                f"demo: error: --output {args.output} is not empty and is not an earlier demo's folder (no "
                f"{DEMO_MARKER} or results.json of the demo); choose a new or empty folder",
                file=sys.stderr,
            )
            return 2
        print(f"Replacing the results of an earlier demo in {args.output}", flush=True)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / DEMO_MARKER).write_text("written by scripts/demo.py (make demo)\n", encoding="utf-8")

    trainer = build_demo_trainer(args)
    print(
        f"Generated {len(trainer.train_dataset)} training and {len(trainer.eval_dataset)} held-out scenes "
        f"({args.image_size} px) of {len(SYNTHETIC_CLASS_NAMES)} classes: {', '.join(SYNTHETIC_CLASS_NAMES)}",
        flush=True,
    )
    untrained = trainer.evaluate()["eval_mean_iou"]
    print(f"Untrained model: mIoU {untrained:.3f} on the held-out scenes", flush=True)

    train_start = time.perf_counter()
    print(f"Training {args.steps} steps of {args.batch_size} images ...", flush=True)
    trainer.train()
    train_seconds = time.perf_counter() - train_start
    trained = trainer.evaluate()["eval_mean_iou"]

    model_dir = args.output / "model"
    trainer.save_model(str(model_dir))  # model + ITAProcessor(image_processor=ITAImageProcessor(...))

    samples = write_samples(trainer, args)
    segmentations = args.output / "segmentations"
    status = ita_segment(
        [
            str(samples),
            "--model",
            str(model_dir),
            "--labels",
            *SYNTHETIC_CLASS_NAMES,
            "--output",
            str(segmentations),
            "--device",
            "cpu",
            "--quiet",
            # An earlier demo's files are replaced (ita-segment's manifest names them); a file of yours is not.
            "--overwrite",
        ]
    )
    if status != 0:
        print(f"ita-segment failed with exit status {status}", file=sys.stderr)
        return status

    total = time.perf_counter() - start
    results = {
        "mean_iou_untrained": untrained,
        "mean_iou_trained": trained,
        "training_steps": args.steps,
        "training_seconds": round(train_seconds, 1),
        "total_seconds": round(total, 1),
        "class_names": list(SYNTHETIC_CLASS_NAMES),
        "notice": NOTICE,
    }
    (args.output / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"\nmIoU on {len(trainer.eval_dataset)} held-out scenes: untrained {untrained:.3f} -> trained {trained:.3f}\n"
        f"Training: {train_seconds:.0f} s; whole demo: {total:.0f} s\n"
        f"Model and processor: {model_dir}\n"
        f"Segmentations of {args.samples} held-out scenes (ita-segment): {segmentations}; "
        f"ground truth: {args.output / 'ground_truth'}\n"
        f"{NOTICE}\n"
        f"The commands (ita-segment, ita-train, ita-evaluate, ita-web, ...) are in {Path(sys.executable).parent}: "
        f"`source {Path(sys.executable).parent / 'activate'}` first, or `make web` for the page."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
