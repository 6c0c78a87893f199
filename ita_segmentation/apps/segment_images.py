"""`ita-segment`'s work, once `cli` has parsed the arguments: check everything that needs no model, load the
pipeline, segment the images batch by batch and write each one's files (see `cli` for what they are)."""

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import pipeline
from transformers.utils import logging as transformers_logging

from image_processing_ita import open_image
from modeling_ita.loading import ModelLoadingError, check_device, check_model_location
from modeling_ita.pipeline import SUBTASKS, ZERO_SHOT_IMAGE_SEGMENTATION_TASK
from postprocessing_ita import binary_mask_to_coco_rle
from processing_ita import parse_vocabulary

from ..dtypes import torch_dtype
from ..errors import ITAUsageError
from ..onnx import ITAOnnxModel, resolve_backend
from ..vocabulary_files import read_vocabulary_file
from .inputs import OUTPUT_SUFFIXES, find_images
from .outputs import SEGMENT_FIELDS, bounding_box, write_instance_png, write_label_map, write_panoptic_png
from .visualization import overlay, segment_overlay

__all__ = ["UsageError", "read_image", "read_vocabulary", "segment_images"]


class UsageError(ITAUsageError):
    """A problem with the command line or its inputs, found before any image is segmented (exit 2)."""


def read_vocabulary(args: argparse.Namespace) -> list[str]:
    """The vocabulary from `--labels` or `--labels-file`, validated; raises `UsageError`."""
    if args.labels_file is not None:
        try:
            vocabulary = read_vocabulary_file(args.labels_file)
        except FileNotFoundError:
            raise UsageError(f"labels file {args.labels_file} does not exist") from None
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise UsageError(f"cannot read labels file {args.labels_file}: {error}") from None
    else:
        vocabulary = args.labels
    try:
        parse_vocabulary(vocabulary)
    except ValueError as error:
        raise UsageError(str(error)) from None
    # The same spelling as read_vocabulary_file: "sofa , couch " -> "sofa,couch".
    return [",".join(name.strip() for name in label.split(",")) for label in vocabulary]


def read_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image file (upright, as the model sees it); raises `ValueError` naming what is
    wrong (empty, truncated, not an image, zero size)."""
    image: Image.Image = open_image(Path(path), where="image")
    return image


def _write_outputs(
    image: Image.Image, image_path: Path, result: dict[str, Any], vocabulary: list[str], args: argparse.Namespace
) -> None:
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


def _check_inputs(
    args: argparse.Namespace, report: Callable[[str], None]
) -> tuple[torch.device, list[str], list[Path], list[tuple[Path, str]]]:
    """Everything that can be checked before loading the model; returns `(device, vocabulary, images,
    problems)` or raises `UsageError`. Missing inputs are reported (and counted as failures) but let the others
    run."""
    if args.task not in SUBTASKS:  # the parser leaves --task to the pipeline's list (it imports torch)
        raise UsageError(f"--task: invalid choice {args.task!r} (choose from {', '.join(SUBTASKS)})")
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
    skipped: list[Path] = []
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
    stems: dict[str, list[Path]] = {}
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


def _check_output_folder(args: argparse.Namespace, images: list[Path]) -> None:
    """Refuse a folder that is not empty unless `--overwrite`, and, even then, outputs that would replace an
    input image."""
    output = args.output
    if output.exists() and not output.is_dir():
        raise UsageError(f"--output {output} is a file, not a folder")
    content = sorted(output.iterdir()) if output.is_dir() else []
    if content and not args.overwrite:
        shown = ", ".join(path.name for path in content[:5]) + (
            f" and {len(content) - 5} more" if len(content) > 5 else ""
        )
        raise UsageError(
            f"output folder {output} is not empty ({shown}); choose a new or empty folder, or give --overwrite to "
            "replace same-name outputs in it"
        )
    inputs = {path.resolve() for path in images}
    for path in images:
        for suffix in OUTPUT_SUFFIXES[args.task]:
            target = (output / f"{path.stem}{suffix}").resolve()
            if target in inputs:
                raise UsageError(f"the output {target} of {path} would replace an input image; choose another --output")


def _check_backend(args: argparse.Namespace) -> None:
    """Resolve `--backend auto` (onnxruntime for a folder written by ita-export) and refuse a device or dtype the
    onnxruntime backend lacks; raises `UsageError`."""
    try:
        args.backend, device = resolve_backend(args.model, args.backend, args.device, args.dtype)
    except ValueError as error:
        raise UsageError(f"--backend {args.backend}: {error}") from None
    if args.backend == "onnxruntime":
        args.device = device


def _load_segmenter(args: argparse.Namespace, device: torch.device) -> Any:
    """The pipeline: the PyTorch model of `--model`, or with `--backend onnxruntime` its exported folder."""
    build: Callable[..., Any] = pipeline  # the task is registered at run time: no overload of `pipeline` names it
    if args.backend == "onnxruntime":
        return build(ZERO_SHOT_IMAGE_SEGMENTATION_TASK, model=ITAOnnxModel.from_pretrained(args.model), device=device)
    return build(ZERO_SHOT_IMAGE_SEGMENTATION_TASK, model=args.model, device=device, dtype=torch_dtype(args.dtype))


def _segment_all(
    segmenter: Any,
    images: list[Path],
    vocabulary: list[str],
    args: argparse.Namespace,
    fail: Callable[[Path, object], None],
) -> tuple[int, int]:
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
                    [image for _, image in batch],
                    candidate_labels=vocabulary,
                    batch_size=len(batch),
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


def _check_task_arguments(args: argparse.Namespace, vocabulary: list[str]) -> None:
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


def _task_arguments(args: argparse.Namespace, vocabulary: list[str]) -> dict[str, Any]:
    """The pipeline's keyword arguments for `--task` (none for semantic segmentation)."""
    if args.task == "semantic":
        return {}
    arguments: dict[str, Any] = {"subtask": args.task}
    if args.stuff:
        spelled = {",".join(name.strip() for name in label.split(",")): label for label in vocabulary}
        arguments["stuff_labels"] = [
            spelled[",".join(name.strip() for name in label.split(","))] for label in args.stuff
        ]
    if args.threshold is not None:
        arguments["threshold"] = args.threshold
    return arguments


def _write_segment_outputs(
    image: Image.Image, image_path: Path, result: dict[str, Any], vocabulary: list[str], args: argparse.Namespace
) -> None:
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
            "bbox": bounding_box(mask),
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
        write_instance_png(segments, masks, (height, width), args.output / f"{stem}_instances.png")
        summary.update(file_name=f"{stem}_instances.png", instances=entries)
    (args.output / f"{stem}.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


def segment_images(args: argparse.Namespace, prog: str) -> int:
    """`ita-segment` with parsed arguments (`cli.build_parser`); returns the exit status (0 done, 1 some image
    or the model failed, 2 usage error)."""
    args.prog = prog

    def report(message: object) -> None:
        print(f"{prog}: error: {message}", file=sys.stderr)

    def fail(path: Path, message: object) -> None:
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


def _load_and_segment(
    args: argparse.Namespace,
    device: torch.device,
    vocabulary: list[str],
    images: list[Path],
    problems: list[tuple[Path, str]],
    report: Callable[[object], None],
    fail: Callable[[Path, object], None],
) -> int:
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
