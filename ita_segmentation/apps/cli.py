"""`ita-segment` (also `python -m ita_segmentation`): segment images into an open vocabulary from the command line.

For every image it writes, in the output folder:

- `<stem>_overlay.png`: the image blended with the class colours, and beside it a legend of the classes present;
- `<stem>_labels.png`: the label map, each pixel's class id (position in the vocabulary); 8-bit grey for up to
  256 classes, 16-bit above;
- `<stem>.json`: the image, its size, the model, the vocabulary, and each present class's pixel share and score
  (`SUMMARY_FIELDS` says what each field is).

The output folder must be new or empty unless `--overwrite` is given (then same-name outputs are replaced and
other files left alone), and files this command wrote are never read back as inputs, even when the output folder
is an input folder.

With `--task panoptic`: `<stem>_overlay.png` (one colour per segment, outlined), `<stem>_panoptic.png` (COCO
panoptic's PNG: segment id = R + 256 G + 256^2 B, 0 where no segment) and `<stem>.json` (its `segments_info`:
id, category_id = class index, area, bbox, score, plus the categories with `isthing`). With `--task instance`:
`<stem>_overlay.png`, `<stem>_instances.png` (16-bit: 1 + the id of the highest-scoring instance covering each
pixel, 0 where none) and `<stem>.json` (each instance's class, score, area, bbox and mask as COCO run-length
encoding, overlaps kept).

Exit status: 0 when every image was segmented; 1 when some image could not be read or segmented (the others
are still written; `--fail-fast` stops at the first) or the model could not be loaded; 2 for a usage error
(bad arguments, an empty or unreadable vocabulary, no input images, clashing output names, a non-empty output
folder, a model folder that does not exist, a device this machine lacks), reported before the model is loaded.
The arguments are parsed by `ita_cli.segment_parser` before torch is imported.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import pipeline
from transformers.utils import logging as transformers_logging

from ita_cli import IMAGE_EXTENSIONS
from ita_cli import segment_parser as build_parser
from image_processing_ita import open_image

from postprocessing_ita import binary_mask_to_coco_rle
from processing_ita import parse_vocabulary
from ..onnx import ITAOnnxModel, resolve_backend
from modeling_ita.loading import ModelLoadingError, check_device, check_model_location
from modeling_ita.pipeline import ZERO_SHOT_IMAGE_SEGMENTATION_TASK
from .visualization import overlay, segment_overlay

__all__ = [
    "IMAGE_EXTENSIONS",
    "SUMMARY_FIELDS",
    "build_parser",
    "find_images",
    "main",
    "read_image",
    "run",
    "write_panoptic_png",
    "write_label_map",
]

PROG = "ita-segment"
OUTPUT_SUFFIXES = ("_overlay.png", "_labels.png", ".json")

# What each field of `<stem>.json` holds (the README's table is checked against this).
SUMMARY_FIELDS = {
    "image": "the input image's path, as given",
    "image_size": "its upright size, {height, width}, the size of the label map",
    "model": "the --model argument",
    "vocabulary": "the classes, in class-id order",
    "segments": "one entry per class present, largest first: label, class_id, pixel_share, score",
    "label_map": "the file name of the label map",
    "overlay": "the file name of the overlay",
}
SEGMENT_FIELDS = {
    "label": "the class as given in the vocabulary",
    "class_id": "its position in the vocabulary, its value in the label map",
    "pixel_share": "the fraction of the image's pixels given this class (the shares sum to 1)",
    "score": (
        "the mean over the segment's pixels of the class's semantic score, sum over queries of class probability "
        "x mask probability: it ranks confidence, is not a probability, and can exceed 1 where masks overlap"
    ),
}


class UsageError(Exception):
    """A problem with the command line or its inputs, found before any image is segmented (exit 2)."""


def _own_outputs(folder):
    """The files in `folder` that an earlier `ita-segment` run wrote: each `<stem>.json` summary that names its
    overlay and label map, and those two files."""
    outputs = set()
    for summary_path in folder.glob("*.json"):
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        stem = summary_path.stem
        if isinstance(summary, dict) and summary.get("overlay") == f"{stem}_overlay.png" and summary.get(
            "label_map"
        ) == f"{stem}_labels.png":
            outputs.update(folder / name for name in (summary_path.name, f"{stem}_overlay.png", f"{stem}_labels.png"))
    return outputs


def find_images(inputs, skipped=None):
    """Expand files and folders into image files. Returns `(images, problems)`: folders contribute their
    image files (by extension, not recursive, sorted by name), except the overlays and label maps an earlier run
    of this command wrote there (added to the list `skipped` when given); a path that does not exist is a
    problem `(path, message)`. Files named explicitly are kept whatever their extension."""
    images, problems = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            own_outputs = _own_outputs(path)
            found = []
            for child in sorted(path.iterdir()):
                if not child.is_file() or child.suffix.lower() not in IMAGE_EXTENSIONS or child.name.startswith("."):
                    continue
                if child in own_outputs:
                    if skipped is not None:
                        skipped.append(child)
                    continue
                found.append(child)
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


def _write_outputs(image, image_path, result, vocabulary, args):
    if args.task != "semantic":
        return _write_segment_outputs(image, image_path, result, vocabulary, args)
    stem = image_path.stem
    label_map = result["label_map"]
    overlay(image, label_map, vocabulary, alpha=args.alpha).save(args.output / f"{stem}_overlay.png")
    write_label_map(label_map, len(vocabulary), args.output / f"{stem}_labels.png")
    summary = {
        "image": str(image_path),
        "image_size": {"height": int(label_map.shape[0]), "width": int(label_map.shape[1])},
        "model": args.model,
        "vocabulary": list(vocabulary),
        "segments": [{key: segment[key] for key in SEGMENT_FIELDS} for segment in result["segments"]],
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
    try:
        device = check_device(args.device)
    except ValueError as error:
        raise UsageError(f"--device: {error}") from None
    try:
        check_model_location(args.model)
    except ModelLoadingError as error:
        raise UsageError(f"--model: {error}") from None
    vocabulary = read_vocabulary(args)
    _check_task_arguments(args, vocabulary)
    skipped = []
    images, problems = find_images(args.inputs, skipped)
    if skipped:
        print(
            f"{args.prog}: leaving out {len(skipped)} file(s) that ita-segment wrote earlier (overlays, label maps)",
            file=sys.stderr,
        )
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
    _check_output_folder(args, images)
    try:
        args.output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot create output folder {args.output}: {error}") from None
    return device, vocabulary, images, problems


def _check_output_folder(args, images):
    """Refuse a folder that is not empty unless `--overwrite`, and, even then, outputs that would replace an
    input image."""
    output = args.output
    if output.exists() and not output.is_dir():
        raise UsageError(f"--output {output} is a file, not a folder")
    content = sorted(output.iterdir()) if output.is_dir() else []
    if content and not args.overwrite:
        shown = ", ".join(path.name for path in content[:5]) + (f" and {len(content) - 5} more" if len(content) > 5 else "")
        raise UsageError(
            f"output folder {output} is not empty ({shown}); choose a new or empty folder, or give --overwrite to "
            "replace same-name outputs in it"
        )
    inputs = {path.resolve() for path in images}
    for path in images:
        for suffix in OUTPUT_SUFFIXES:
            target = (output / f"{path.stem}{suffix}").resolve()
            if target in inputs:
                raise UsageError(f"the output {target} of {path} would replace an input image; choose another --output")


def _check_backend(args):
    """Resolve `--backend auto` (onnxruntime for a folder written by ita-export) and refuse a device or dtype the
    onnxruntime backend lacks; raises `UsageError`."""
    try:
        args.backend, device = resolve_backend(args.model, args.backend, args.device, args.dtype)
    except ValueError as error:
        raise UsageError(f"--backend {args.backend}: {error}") from None
    if args.backend == "onnxruntime":
        args.device = device


def _load_segmenter(args, device):
    """The pipeline: the PyTorch model of `--model`, or with `--backend onnxruntime` its exported folder."""
    if args.backend == "onnxruntime":
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
                results = segmenter(
                    [image for _, image in batch], candidate_labels=vocabulary, batch_size=len(batch),
                    **_task_arguments(args, vocabulary),
                )
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


# ------------------------------------------------------------------------------------------------------------
# --task panoptic | instance
# ------------------------------------------------------------------------------------------------------------




def _check_task_arguments(args, vocabulary):
    if args.task == "semantic":
        given = [name for name in ("stuff", "threshold") if getattr(args, name) is not None]
        if given:
            raise UsageError(f"--{' and --'.join(given)} apply to --task panoptic or instance")
        return
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise UsageError(f"--threshold must lie in [0, 1], got {args.threshold}")
    spelled = {",".join(name.strip() for name in label.split(",")): label for label in vocabulary}
    for label in args.stuff or ():
        if ",".join(name.strip() for name in label.split(",")) not in spelled:
            raise UsageError(f"--stuff {label!r} is not a class of the vocabulary {vocabulary}")


def _task_arguments(args, vocabulary):
    """The pipeline's keyword arguments for `--task` (none for semantic segmentation)."""
    if args.task == "semantic":
        return {}
    arguments = {"subtask": args.task}
    if args.stuff:
        spelled = {",".join(name.strip() for name in label.split(",")): label for label in vocabulary}
        arguments["stuff_labels"] = [spelled[",".join(name.strip() for name in label.split(","))] for label in args.stuff]
    if args.threshold is not None:
        arguments["threshold"] = args.threshold
    return arguments


def _bbox(mask):
    """COCO's `[x, y, width, height]` of a boolean mask."""
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return [0, 0, 0, 0]
    return [int(columns[0]), int(rows[0]), int(columns[-1] - columns[0] + 1), int(rows[-1] - rows[0] + 1)]


def write_panoptic_png(segment_map, path):
    """Save a `[H, W]` segment-id map as COCO panoptic's RGB PNG (id = R + 256 G + 256^2 B)."""
    segment_map = np.asarray(segment_map, dtype=np.uint32)
    rgb = np.stack([segment_map % 256, segment_map // 256 % 256, segment_map // 65536 % 256], axis=-1)
    Image.fromarray(rgb.astype(np.uint8), mode="RGB").save(path)


def _write_segment_outputs(image, image_path, result, vocabulary, args):
    """`--task panoptic` / `instance` outputs of one image."""
    stem = image_path.stem
    stuff = set(_task_arguments(args, vocabulary).get("stuff_labels", ()))
    segments = result["segments"]
    masks = [np.asarray(segment["mask"]) == 255 for segment in segments]
    names = [f"{segment['label'].split(',')[0].strip()} {segment['score']:.2f}" for segment in segments]
    height, width = image.height, image.width
    if args.task == "instance":  # lowest score first, so that the best instance is drawn on top
        segment_overlay(image, masks[::-1], names[::-1], alpha=args.alpha).save(args.output / f"{stem}_overlay.png")
    else:
        segment_overlay(image, masks, names, alpha=args.alpha).save(args.output / f"{stem}_overlay.png")
    categories = [
        {"id": index, "name": label.split(",")[0].strip(), "synonyms": label, "isthing": int(label not in stuff)}
        for index, label in enumerate(vocabulary)
    ]
    entries = []
    for segment, mask in zip(segments, masks):
        entry = {
            "id": int(segment["id"]),
            "category_id": int(segment["class_id"]),
            "label": segment["label"],
            "score": float(segment["score"]),
            "iscrowd": 0,
            "area": int(mask.sum()),
            "bbox": _bbox(mask),
        }
        if args.task == "instance":
            entry["segmentation"] = binary_mask_to_coco_rle(torch.from_numpy(mask))
        else:
            entry["was_fused"] = bool(segment["was_fused"])
        entries.append(entry)
    summary = {
        "image": str(image_path),
        "image_size": {"height": height, "width": width},
        "model": args.model,
        "task": args.task,
        "vocabulary": list(vocabulary),
        "categories": categories,
        "overlay": f"{stem}_overlay.png",
    }
    if args.task == "panoptic":
        write_panoptic_png(result["segment_map"], args.output / f"{stem}_panoptic.png")
        summary.update(file_name=f"{stem}_panoptic.png", segments_info=entries)
    else:
        top = np.zeros((height, width), dtype=np.uint16)
        for segment, mask in reversed(list(zip(segments, masks))):
            top[mask] = segment["id"] + 1
        Image.fromarray(top).save(args.output / f"{stem}_instances.png")  # mode I;16
        summary.update(file_name=f"{stem}_instances.png", instances=entries)
    (args.output / f"{stem}.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


def main(argv=None, prog=PROG):
    """Run `ita-segment` with the arguments `argv` (default: `sys.argv[1:]`); returns the exit status (0 done,
    1 some image or the model failed, 2 usage error)."""
    return run(build_parser(prog).parse_args(argv), prog)


def run(args, prog=PROG):
    """`ita-segment` with parsed arguments (`ita_cli.segment_parser`); returns the exit status."""
    args.prog = prog

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
    bars_were_on = transformers_logging.is_progress_bar_enabled()
    if args.quiet:
        transformers_logging.disable_progress_bar()  # the vocabulary encoding's bar too
    try:
        return _load_and_segment(args, device, vocabulary, images, problems, report, fail)
    finally:
        if bars_were_on:
            transformers_logging.enable_progress_bar()


def _load_and_segment(args, device, vocabulary, images, problems, report, fail):
    prog = args.prog
    try:
        segmenter = _load_segmenter(args, device)
    except ModelLoadingError as error:  # weights missing from the checkpoint, unreadable files, ...
        report(f"cannot load model {args.model}: {error}")
        return 1
    except Exception as error:  # an unknown Hub id, no network, ...
        report(f"cannot load model {args.model}: {type(error).__name__}: {error}")
        return 1

    done, failures = _segment_all(segmenter, images, vocabulary, args, fail)
    failures += len(problems)
    if failures:
        print(f"{prog}: {done} image(s) segmented, {failures} failed; outputs in {args.output}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
