"""`ita-segment` (also `python -m modeling_ita`): segment images into an open vocabulary from the command line.

For every image it writes, in the output folder:

- `<stem>_overlay.png`: the image blended with the class colours, and a legend of the classes present;
- `<stem>_labels.png`: the label map, each pixel's class id (position in the vocabulary); 8-bit grey for up to
  256 classes, 16-bit above;
- `<stem>.json`: the image, its size, the model, the vocabulary, and each present class's pixel share and score.

Exit status: 0 when every image was segmented; 1 when some image could not be read or segmented (the others
are still written; `--fail-fast` stops at the first) or the model could not be loaded; 2 for a usage error
(bad arguments, an empty or unreadable vocabulary, no input images, clashing output names), reported before
the model is loaded.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import pipeline

from .pipeline import ZERO_SHOT_IMAGE_SEGMENTATION_TASK
from .visualization import overlay
from image_processing_ita import open_image

from ..vocabulary import parse_vocabulary

__all__ = ["IMAGE_EXTENSIONS", "build_parser", "find_images", "main", "read_image", "write_label_map"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
PROG = "ita-segment"
DTYPES = ("float32", "bfloat16", "float16")
BACKENDS = ("auto", "pytorch", "onnxruntime")


class UsageError(Exception):
    """A problem with the command line or its inputs, found before any image is segmented (exit 2)."""


def build_parser(prog=PROG):
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Open-vocabulary semantic segmentation with ITA / FC-CLIP: label every pixel of each image with one of "
            "the classes you name. Writes <stem>_overlay.png, <stem>_labels.png and <stem>.json per image."
        ),
        epilog=(
            "Example: ita-segment photos/ cat.jpg --model path/to/checkpoint --labels cat 'sofa,couch' wall "
            "--output out/. Exit status: 0 all images done, 1 some image or the model failed, 2 usage error."
        ),
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="IMAGE_OR_DIR",
        help=f"image files, or folders whose image files ({', '.join(IMAGE_EXTENSIONS)}) are segmented in name order",
    )
    parser.add_argument("--model", required=True, help="a checkpoint folder or a Hugging Face Hub model id")
    vocabulary = parser.add_mutually_exclusive_group(required=True)
    vocabulary.add_argument(
        "--labels",
        nargs="+",
        metavar="CLASS",
        help="the classes, one argument each; synonyms of a class separated by commas ('sofa,couch')",
    )
    vocabulary.add_argument(
        "--labels-file",
        type=Path,
        metavar="FILE",
        help="a class list, one class per line: 'name,synonym,...' or FC-CLIP's 'id:name,synonym,...'",
    )
    parser.add_argument("--output", "-o", type=Path, required=True, metavar="DIR", help="output folder (created)")
    parser.add_argument(
        "--device", default=None, help="torch device: cpu, cuda, cuda:1, mps, ... (default: cuda if available)"
    )
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="model precision (default: float32)")
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="pytorch, or onnxruntime for a folder written by ita-export (CPU, float32); auto (default): "
        "onnxruntime when --model is such a folder",
    )
    parser.add_argument("--batch-size", type=int, default=1, metavar="N", help="images per forward pass (default: 1)")
    parser.add_argument(
        "--alpha", type=float, default=0.5, help="opacity of the class colours in the overlay (default: 0.5)"
    )
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first image that fails")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    return parser


def find_images(inputs):
    """Expand files and folders into image files. Returns `(images, problems)`: folders contribute their
    image files (by extension, not recursive, sorted by name); a path that does not exist is a problem
    `(path, message)`. Files named explicitly are kept whatever their extension."""
    images, problems = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                child
                for child in path.iterdir()
                if child.is_file() and child.suffix.lower() in IMAGE_EXTENSIONS and not child.name.startswith(".")
            )
            if not found:
                problems.append((path, f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in this folder"))
            images.extend(found)
        elif path.is_file():
            images.append(path)
        else:
            problems.append((path, "no such file or folder"))
    return images, problems


def read_vocabulary(args):
    """The vocabulary from `--labels` or `--labels-file`, validated; raises `UsageError`."""
    if args.labels_file is not None:
        from ..evaluation.benchmarks import read_vocabulary_file  # imports `datasets`: only when needed

        try:
            vocabulary = read_vocabulary_file(args.labels_file)
        except FileNotFoundError:
            raise UsageError(f"labels file {args.labels_file} does not exist") from None
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise UsageError(f"cannot read labels file {args.labels_file}: {error}") from None
    else:
        vocabulary = args.labels
    try:
        synonyms = parse_vocabulary(vocabulary)
    except ValueError as error:
        raise UsageError(str(error)) from None
    # The same spelling as read_vocabulary_file: "sofa , couch " -> "sofa,couch".
    return [",".join(names) for names in synonyms]


def read_image(path):
    """Open and fully decode an image file (upright, as the model sees it); raises `ValueError` naming what is
    wrong (empty, truncated, not an image, zero size)."""
    return open_image(Path(path), where="image")


def write_label_map(label_map, num_classes, path):
    """Save a `[H, W]` label map as a PNG: 8-bit grey for up to 256 classes, 16-bit grey up to 65536."""
    label_map = np.asarray(label_map)
    if num_classes <= 256:
        image = Image.fromarray(label_map.astype(np.uint8))
    elif num_classes <= 65536:
        image = Image.fromarray(label_map.astype(np.uint16))  # mode I;16
    else:
        raise ValueError(f"{num_classes} classes do not fit a 16-bit PNG")
    image.save(path)


def _torch_device(name):
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise UsageError(f"--device {name!r} is not a torch device: {error}") from None


def _write_outputs(image, image_path, result, vocabulary, args):
    stem = image_path.stem
    label_map = result["label_map"]
    overlay(image, label_map, vocabulary, alpha=args.alpha).save(args.output / f"{stem}_overlay.png")
    write_label_map(label_map, len(vocabulary), args.output / f"{stem}_labels.png")
    summary = {
        "image": str(image_path),
        "image_size": {"height": int(label_map.shape[0]), "width": int(label_map.shape[1])},
        "model": args.model,
        "vocabulary": list(vocabulary),
        "pixel_shares": {segment["label"]: segment["pixel_share"] for segment in result["segments"]},
        "segments": [
            {key: segment[key] for key in ("label", "class_id", "pixel_share", "score")}
            for segment in result["segments"]
        ],
        "label_map": f"{stem}_labels.png",
        "overlay": f"{stem}_overlay.png",
    }
    (args.output / f"{stem}.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


def _check_inputs(args, report):
    """Everything that can be checked before loading the model; returns `(device, vocabulary, images,
    problems)` or raises `UsageError`. Missing inputs are reported (and counted as failures) but let the others
    run."""
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not 0.0 <= args.alpha <= 1.0:
        raise UsageError(f"--alpha must lie in [0, 1], got {args.alpha}")
    device = _torch_device(args.device)
    vocabulary = read_vocabulary(args)
    images, problems = find_images(args.inputs)
    for path, message in problems:
        report(f"{path}: {message}")
    if not images:
        raise UsageError("no input images")
    stems = {}
    for path in images:
        stems.setdefault(path.stem, []).append(path)
    clashes = [paths for paths in stems.values() if len(paths) > 1]
    if clashes:
        names = "; ".join(" and ".join(str(path) for path in paths) for paths in clashes)
        raise UsageError(f"these inputs would write the same output files (same file stem): {names}")
    try:
        args.output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot create output folder {args.output}: {error}") from None
    return device, vocabulary, images, problems


def _check_backend(args):
    """Resolve `--backend auto` (onnxruntime for a folder written by ita-export) and refuse options that the
    onnxruntime backend does not have; raises `UsageError`."""
    from ..onnx import is_onnx_model_folder

    if args.backend == "auto":
        args.backend = "onnxruntime" if is_onnx_model_folder(args.model) else "pytorch"
    if args.backend == "onnxruntime":
        if args.device is not None and _torch_device(args.device).type != "cpu":
            raise UsageError(f"--backend onnxruntime runs on the CPU; got --device {args.device}")
        if args.dtype != "float32":
            raise UsageError(f"--backend onnxruntime computes in float32; got --dtype {args.dtype}")
        args.device = "cpu"


def _load_segmenter(args, device):
    """The pipeline: the PyTorch model of `--model`, or with `--backend onnxruntime` its exported folder."""
    if args.backend == "onnxruntime":
        from ..onnx import ITAOnnxModel

        return pipeline(ZERO_SHOT_IMAGE_SEGMENTATION_TASK, model=ITAOnnxModel.from_pretrained(args.model), device=device)
    return pipeline(ZERO_SHOT_IMAGE_SEGMENTATION_TASK, model=args.model, device=device, dtype=getattr(torch, args.dtype))


def _segment_all(segmenter, images, vocabulary, args, fail):
    """Segment `images` batch by batch, writing each one's outputs; returns `(done, failures)`."""
    done = failures = 0
    with tqdm(total=len(images), unit="image", disable=args.quiet or None, file=sys.stderr) as progress:
        for start in range(0, len(images), args.batch_size):
            batch = []
            for path in images[start : start + args.batch_size]:
                try:
                    batch.append((path, read_image(path)))
                except (OSError, ValueError) as error:
                    fail(path, error)
                    failures += 1
                    progress.update(1)
            if failures and args.fail_fast:
                break
            if not batch:
                continue
            try:
                results = segmenter([image for _, image in batch], candidate_labels=vocabulary, batch_size=len(batch))
            except Exception as error:  # the model failed on this batch (out of memory, ...): go on with the next
                for path, _ in batch:
                    fail(path, f"segmentation failed: {error}")
                failures += len(batch)
                progress.update(len(batch))
            else:
                for (path, image), result in zip(batch, results):
                    try:
                        _write_outputs(image, path, result, vocabulary, args)
                        done += 1
                    except OSError as error:
                        fail(path, f"cannot write outputs: {error}")
                        failures += 1
                    progress.update(1)
            if failures and args.fail_fast:
                break
    return done, failures


def main(argv=None, prog=PROG):
    """Run `ita-segment` with the arguments `argv` (default: `sys.argv[1:]`); returns the exit status (0 done,
    1 some image or the model failed, 2 usage error)."""
    args = build_parser(prog).parse_args(argv)

    def report(message):
        print(f"{prog}: error: {message}", file=sys.stderr)

    def fail(path, message):
        tqdm.write(f"{prog}: error: {path}: {message}", file=sys.stderr)  # keeps the progress bar intact

    try:
        _check_backend(args)
        device, vocabulary, images, problems = _check_inputs(args, report)
    except UsageError as error:
        report(error)
        return 2
    if problems and args.fail_fast:
        return 1

    try:
        segmenter = _load_segmenter(args, device)
    except Exception as error:  # a missing folder, an unknown Hub id, no network, a broken checkpoint, ...
        report(f"cannot load model {args.model}: {error}")
        return 1

    done, failures = _segment_all(segmenter, images, vocabulary, args, fail)
    failures += len(problems)
    if failures:
        print(f"{prog}: {done} image(s) segmented, {failures} failed; outputs in {args.output}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
