"""`ita-segment` over a folder of photos: images per second on 1 and 2 processes (`accelerate launch`), and the
vocabulary's share of a run's start with a cold disk cache, a warm one, and a vocabulary stored in the model folder.

A toy model (`synthetic.toy_config`) is saved to a temporary folder with `--classes` classes (with the toy's
prompt templates, enough prompts for the disk cache), and `--images` synthetic photos of `--size` are written.
Every run is the real command in a new process; the times come from its `run_summary.json` (`start_seconds`:
checks, model loading and the vocabulary; `images_per_second`: images over the slowest process's working
seconds) and the command's wall-clock seconds (torch's import and, for `accelerate launch`, its launcher
included). Printed: each run, then ratios measured in this one run.

    python benchmarks/bench_many.py --images 48 --classes 600
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
import torch
from measure import REPOSITORY_ROOT, machine_description
from PIL import Image

from image_processing_ita import ITAImageProcessor
from ita_segmentation.synthetic import draw_synthetic_scene, toy_config
from modeling_ita import ITAForOpenVocabSegmentation, ITAProcessor

BIN = Path(sys.executable).parent


def save_toy_model(folder: Path) -> Path:
    torch.manual_seed(0)
    model = ITAForOpenVocabSegmentation(toy_config())
    model.save_pretrained(folder)
    size = {"shortest_edge": 192, "longest_edge": 320}
    ITAProcessor(image_processor=ITAImageProcessor.for_model_config(model.config, size=size)).save_pretrained(folder)
    return folder


def write_photos(folder: Path, count: int, height: int, width: int) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(count):
        image, _, _ = draw_synthetic_scene(rng, height, width)
        Image.fromarray(image).save(folder / f"photo{index:04d}.jpg", quality=90)


def segment(arguments: list[str], output: Path, processes: int, cache: str, threads: int) -> dict:
    """Run `ita-segment` (on `processes` processes through `accelerate launch`); returns its summary plus `wall`."""
    environment = dict(os.environ, HF_HUB_OFFLINE="1", ITA_VOCABULARY_CACHE=cache, OMP_NUM_THREADS=str(threads))
    if processes == 1:
        command = [str(BIN / "ita-segment")]
    else:
        command = [
            str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines",
            "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--num_cpu_threads_per_process", str(threads),
            "-m", "ita_segmentation",
        ]  # fmt: skip
    started = time.perf_counter()
    completed = subprocess.run(
        [*command, *arguments, "--output", str(output), "--quiet"],
        cwd=REPOSITORY_ROOT,
        env=environment,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(f"ita-segment failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
    summary = json.loads((output / "run_summary.json").read_text())
    summary["wall"] = wall
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--classes", type=int, default=600, help="classes (x the toy's 2 templates = prompts)")
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    print(machine_description(cores))
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        model = save_toy_model(root / "model")
        write_photos(root / "photos", args.images, *args.size)
        classes = root / "classes.txt"
        classes.write_text("".join(f"class number {index}\n" for index in range(args.classes)))
        common = [str(root / "photos"), "--model", str(model), "--labels-file", str(classes)]

        runs = {}
        cache = root / "cache"
        runs["cold cache, 1 process"] = segment(common, root / "cold", 1, str(cache), cores)
        runs["warm cache, 1 process"] = segment(common, root / "warm", 1, str(cache), cores)
        stored_model = root / "model-stored"
        loaded = ITAForOpenVocabSegmentation.from_pretrained(model)
        loaded.save_pretrained(stored_model)
        ITAProcessor.from_pretrained(model).save_pretrained(stored_model)
        loaded.store_vocabularies(stored_model, [classes.read_text().splitlines()])
        stored_common = [str(root / "photos"), "--model", str(stored_model), "--labels-file", str(classes)]
        runs["stored vocabulary, no cache, 1 process"] = segment(stored_common, root / "stored", 1, "off", cores)
        runs["cold cache, 2 processes"] = segment(common, root / "two", 2, str(root / "cache2"), 1)

        print(f"\n{args.images} photos {args.size[0]}x{args.size[1]}, {args.classes} classes, toy model")
        print(f"{'run':42s} {'wall s':>8s} {'start s':>8s} {'images/s':>9s}")
        for name, summary in runs.items():
            print(
                f"{name:42s} {summary['wall']:8.1f} {summary['start_seconds']:8.2f} {summary['images_per_second']:9.2f}"
            )
        cold = runs["cold cache, 1 process"]["start_seconds"]
        warm = runs["warm cache, 1 process"]["start_seconds"]
        stored = runs["stored vocabulary, no cache, 1 process"]["start_seconds"]
        one = runs["warm cache, 1 process"]["images_per_second"]
        two = runs["cold cache, 2 processes"]["images_per_second"]
        print(
            f"\nvocabulary's share of a cold start: {(cold - warm) / cold:.0%} (start cold / warm cache: {cold / warm:.2f}x)"
        )
        print(f"start with a stored vocabulary (cache off) / warm cache: {stored / warm:.2f}x")
        print(f"images/s, 2 processes / 1 process ({cores} cores): {two / one:.2f}x")


if __name__ == "__main__":
    main()
