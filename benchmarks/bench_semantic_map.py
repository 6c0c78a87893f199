"""The semantic post-processing kernel alone (`postprocessing_ita.semantic_map`) at a photo's size, on generated or saved model
outputs, against the same kernel of another git revision, timed alternately in one process.

Inputs shaped like the full-size model's for one photo: 200 queries, K classes, the 200x272 mask grid of the
800x1088 frame holding the 800x1067 image, label map at `--photo-size`. Three generated kinds:

- `random-init`: near-uniform class probabilities and low-contrast masks, every class close to every other,
  labels changing everywhere (the model with random weights that `bench_photo_sizes.py` runs gives far fewer
  label changes: use its saved outputs, `--inputs`, for that model);
- `trained-like`: confident queries (peaked class probabilities) and saturated masks that vary smoothly over the
  grid, as a trained model gives: regions with boundaries between them;
- `noisy`: confident queries and masks that change from one grid point to the next: labels change nearly
  everywhere (a stress case, like `bench_photo_sizes.py --spread-heads`).

`--against REV` loads `postprocessing_ita.py` (before it, `modeling_ita/kernels.py`) as it was at git revision REV (read with `git show`, nothing is
checked out) and times it alternately with the working tree's; labels are compared. Stage times come from timers
around the kernel's parts.

`--inputs FILE...` times the kernel on a model's real outputs instead, saved by `bench_photo_sizes.py
--save-inputs DIR` (one file per vocabulary and photo; the label map is made at `--photo-size`).

    python benchmarks/bench_semantic_map.py --against e2c790e~1
    python benchmarks/bench_semantic_map.py --inputs /tmp/pp-inputs/stress/ade150-3000x4000.pt --against 0899fa7
    python benchmarks/bench_semantic_map.py --classes 847 --photo-size 4000 6000 --against e2c790e~1
"""

import argparse
import functools
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from measure import machine_description, set_threads

import postprocessing_ita as kernels

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("_grid_decisions", "_PixelScores.compute", "_cell_candidates", "bilinear_combine")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=150)
    parser.add_argument("--photo-size", type=int, nargs=2, default=(3000, 4000), metavar=("HEIGHT", "WIDTH"))
    parser.add_argument(
        "--kinds",
        nargs="+",
        choices=("random-init", "trained-like", "noisy"),
        default=["random-init", "trained-like", "noisy"],
    )
    parser.add_argument(
        "--inputs",
        nargs="+",
        metavar="FILE",
        default=[],
        help="time the kernel on saved model outputs (bench_photo_sizes.py --save-inputs) instead of "
        "the generated kinds",
    )
    parser.add_argument("--against", metavar="REV", help="also time kernels.py of this git revision")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def outputs(kind, num_classes, seed, num_queries=200, grid=(200, 272)):
    generator = torch.Generator().manual_seed(seed)
    if kind == "random-init":
        class_probs = (torch.randn(num_queries, num_classes + 1, generator=generator) * 0.05).softmax(-1)[:, :-1]
        mask_logits = torch.randn(num_queries, *grid, generator=generator) * 0.3
    elif kind == "noisy":
        class_probs = (torch.randn(num_queries, num_classes + 1, generator=generator) * 4).softmax(-1)[:, :-1]
        mask_logits = torch.randn(num_queries, *grid, generator=generator) * 3
    else:
        class_probs = (torch.randn(num_queries, num_classes + 1, generator=generator) * 4).softmax(-1)[:, :-1]
        coarse = torch.randn(num_queries, grid[0] // 8, grid[1] // 8, generator=generator) * 8
        mask_logits = F.interpolate(coarse[None], size=grid, mode="bilinear", align_corners=False)[0]
    return class_probs, mask_logits


def read_inputs(path):
    """Post-processing inputs saved by `bench_photo_sizes.py --save-inputs`."""
    saved = torch.load(path, weights_only=True)
    return saved["class_probs"], saved["mask_logits"], tuple(saved["image_size"]), tuple(saved["frame_size"])


def kernels_at(revision):
    """The post-processing kernels of a git revision, imported as their own module."""
    # The post-processing kernels lived in modeling_ita/kernels.py before they moved to postprocessing_ita.py.
    listed = subprocess.run(
        ["git", "ls-tree", "--name-only", revision, "postprocessing_ita.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    file = listed or "modeling_ita/kernels.py"
    source = subprocess.run(
        ["git", "show", f"{revision}:{file}"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "kernels_at_revision.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("kernels_at_revision", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def instrument(module, samples):
    """Timers around the kernel's parts (where the module has them); `samples[stage]` sums each call."""
    for name in STAGES:
        owner_name, _, attribute = name.rpartition(".")
        owner = getattr(module, owner_name) if owner_name else module
        if not hasattr(owner, attribute):
            continue
        original = getattr(owner, attribute)

        @functools.wraps(original)
        def timed(*args, _original=original, _name=name, **kwargs):
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                samples[_name] = samples.get(_name, 0.0) + time.perf_counter() - start

        setattr(owner, attribute, timed)


def main(argv=None):
    args = parse_args(argv)
    set_threads(args.threads)
    print(machine_description(args.threads))
    target = tuple(args.photo_size)
    versions = {"this tree": kernels}
    if args.against:
        versions[args.against] = kernels_at(args.against)
    stage_samples = {name: {} for name in versions}
    for name, module in versions.items():
        instrument(module, stage_samples[name])
    cases = [(Path(path).name, *read_inputs(path)) for path in args.inputs] or [
        (kind, *outputs(kind, args.classes, args.seed), (800, 1067), (800, 1088)) for kind in args.kinds
    ]
    for kind, class_probs, mask_logits, image_size, frame_size in cases:
        arguments = (class_probs, mask_logits, image_size, frame_size, target)
        times = {name: [] for name in versions}
        labels = {}
        for name, module in versions.items():  # warm-up
            labels[name] = module.semantic_map(*arguments, winning_scores=False)[0]
        for samples in stage_samples.values():
            samples.clear()
        for _ in range(args.repeats):
            for name, module in versions.items():
                start = time.perf_counter()
                module.semantic_map(*arguments, winning_scores=False)
                times[name].append(time.perf_counter() - start)
        undecided = kernels._undecided_share(kernels._grid_decisions(class_probs, mask_logits, 2**22), *arguments[2:4])
        print(
            f"\n{kind}, {class_probs.shape[1]} classes, photo {target[0]}x{target[1]}: undecided grid "
            f"{undecided:.1%}; medians of {args.repeats} alternating runs"
        )
        for name in versions:
            stages = ", ".join(f"{stage} {value / args.repeats:.2f}" for stage, value in stage_samples[name].items())
            print(
                f"  {name:<16}{statistics.median(times[name]):7.2f} s   runs "
                f"{' '.join(f'{t:.2f}' for t in times[name])}   (per run: {stages})"
            )
        if args.against:
            same = torch.equal(labels["this tree"], labels[args.against])
            ratio = statistics.median(times[args.against]) / statistics.median(times["this tree"])
            print(f"  labels equal: {same}; RATIO {args.against} / this tree: {ratio:.2f}")


if __name__ == "__main__":
    sys.exit(main())
