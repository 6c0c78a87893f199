"""The frozen CLIP trunk alone (ConvNeXt stem + stages), PyTorch against onnxruntime: how fast the exported
trunk runs, the floor of `bench_inference.py --backend onnxruntime`.

The full-size ITA's trunk (random weights, seed 0) is exported twice with `ita-export`'s translation code
(`ita_segmentation.onnx.export`): once with torch.onnx's own translations of every operator, once with the package's
(`TRANSLATIONS`: GELU in the order onnxruntime fuses, bias-free convolutions without a zero bias). PyTorch and
the two onnxruntime sessions (2 intra-op threads, idle threads not spinning, as `ITAOnnxModel` runs them; add
`--spinning` for a third session whose idle threads spin) run on the same `[1, 3, H, W]` input, alternately.

    python benchmarks/bench_onnx_trunk.py --repeats 3
    python benchmarks/bench_onnx_trunk.py --size 800 1088 --spinning
"""

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from measure import machine_description, set_threads
from torch import nn

from configuration_ita import ITAConfig
from modeling_ita import ITAForOpenVocabSegmentation


class Trunk(nn.Module):
    """Stem and stages of a timm ConvNeXt: `backbone.extract_features`'s trunk, without the dense-feature head."""

    def __init__(self, trunk):
        super().__init__()
        self.stem, self.stages = trunk.stem, trunk.stages

    def forward(self, pixel_values):
        return self.stages(self.stem(pixel_values))


def export(trunk, path, size, translations):
    from ita_segmentation.onnx.export import _to_onnx

    start = time.perf_counter()
    batch = torch.export.Dim("batch", min=1, max=64)
    _to_onnx(
        trunk, (torch.zeros(2, 3, *size),), None, {"pixel_values": {0: batch}}, ["features"], path, False, translations
    )
    print(f"exported {path.name} in {time.perf_counter() - start:.0f} s", flush=True)
    return path


def session(path, threads, spinning):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=(800, 1088),
        metavar=("HEIGHT", "WIDTH"),
        help="the input's size (default: a 600x800 photo after the processor)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--spinning", action="store_true", help="also time a session whose idle threads spin")
    args = parser.parse_args()
    set_threads(args.threads)
    print(machine_description(args.threads))
    torch.manual_seed(0)
    trunk = Trunk(ITAForOpenVocabSegmentation(ITAConfig()).backbone.clip_model.visual.trunk).eval()
    folder = Path(tempfile.mkdtemp(prefix="ita-bench-onnx-trunk-"))  # removed at the end, even on an error
    print(f"exporting the trunk twice to {folder} (about 1.6 GB)", flush=True)
    try:
        compare(trunk, folder, args)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def compare(trunk, folder, args):
    from ita_segmentation.onnx.export import TRANSLATIONS

    pixel_values = torch.randn(1, 3, *args.size, generator=torch.Generator().manual_seed(1))
    plain = session(export(trunk, folder / "torch_onnx_translations.onnx", args.size, {}), args.threads, False)
    ours_path = export(trunk, folder / "package_translations.onnx", args.size, TRANSLATIONS)
    runs = {
        "PyTorch": None,
        "onnxruntime, torch.onnx's translations": plain,
        "onnxruntime, ita-export's translations": session(ours_path, args.threads, False),
    }
    if args.spinning:
        runs["the same, idle threads spinning"] = session(ours_path, args.threads, True)

    with torch.no_grad():
        reference = trunk(pixel_values).numpy()

    def run(name):
        if runs[name] is None:
            with torch.no_grad():
                return trunk(pixel_values).numpy()
        return runs[name].run(None, {runs[name].get_inputs()[0].name: pixel_values.numpy()})[0]

    print(
        f"input {tuple(pixel_values.shape)}; warm-up and max |difference| from PyTorch "
        f"(largest value {abs(reference).max():.3g}):"
    )
    for name in runs:
        print(f"  {name:<42}{float(abs(run(name) - reference).max()):.3g}", flush=True)
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name in runs:
            start = time.perf_counter()
            run(name)
            times[name].append(time.perf_counter() - start)
        print("  round: " + ", ".join(f"{name} {values[-1]:.2f} s" for name, values in times.items()), flush=True)
    base = statistics.median(times["PyTorch"])
    print(f"\nmedians over {args.repeats} alternating runs (seconds) and ratios to PyTorch:")
    for name, values in times.items():
        rounds = " ".join(f"{a / b:.2f}" for a, b in zip(values, times["PyTorch"]))
        print(
            f"  {name:<42}{statistics.median(values):7.2f}  RATIO {statistics.median(values) / base:.2f} "
            f"(per round {rounds})"
        )


if __name__ == "__main__":
    main()
