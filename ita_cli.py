"""The `ita-segment`, `ita-evaluate`, `ita-convert`, `ita-export` and `ita-train` commands: arguments first, heavy
imports after.

Importing `modeling_ita` imports torch, transformers and open_clip (several seconds), so this module, outside the
package, imports only the standard library: `--help` and usage errors answer at once, and the package is
imported once the arguments are known to be well formed. Each command's work lives in the package
(`ita_segmentation.apps.cli`, `ita_segmentation.evaluation.cli`, `ita_segmentation.hub.cli`, `ita_segmentation.onnx.cli`,
`ita_segmentation.training`); the files in `scripts/` call these functions.
"""

import argparse
import json
import shlex
import sys
from pathlib import Path

__all__ = [
    "BENCHMARK_NAMES",
    "IMAGE_EXTENSIONS",
    "convert",
    "convert_parser",
    "export",
    "export_parser",
    "evaluate",
    "evaluate_parser",
    "parse_evaluate_args",
    "segment",
    "segment_parser",
    "train",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# The pipeline's subtasks (modeling_ita.pipeline.SUBTASKS; not imported here: it imports torch).
SUBTASKS = ("semantic", "panoptic", "instance")
DTYPES = ("float32", "bfloat16", "float16")
# The backends (`ita_segmentation.onnx.BACKENDS`) and `ita-export`'s default check tolerances
# (`ita_segmentation.onnx.export.DEFAULT_TOLERANCES`), kept equal to the package's by a test.
BACKENDS = ("auto", "pytorch", "onnxruntime")
EXPORT_ATOL, EXPORT_RTOL = 1e-3, 5e-3
# The registered benchmarks (`ita_segmentation.evaluation.BENCHMARKS`, which a test keeps equal to this), here so
# that `--benchmark` is checked before anything heavy is imported.
BENCHMARK_NAMES = {
    "ade150": "A-150",
    "ade847": "A-847",
    "pc59": "PC-59",
    "pc459": "PC-459",
    "pas20": "PAS-20",
    "pas21": "PAS-21",
}
EVALUATION_LAYOUTS = ("auto", "label_folders")


# ---------------------------------------------------------------------------------------------------- segment
def segment_parser(prog="ita-segment"):
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
    parser.add_argument(
        "--output", "-o", type=Path, required=True, metavar="DIR", help="output folder (created; must be empty)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a folder that is not empty, replacing same-name outputs (other files are left alone)",
    )
    parser.add_argument(
        "--device", default=None, help="torch device: cpu, cuda, cuda:1, mps, ... (default: cuda if available)"
    )
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="model precision (default: float32)")
    _add_backend_argument(parser)
    parser.add_argument("--batch-size", type=int, default=1, metavar="N", help="images per forward pass (default: 1)")
    parser.add_argument(
        "--alpha", type=float, default=0.5, help="opacity of the class colours in the overlay (default: 0.5)"
    )
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first image that fails")
    _add_task_arguments(parser)
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    return parser


def _add_backend_argument(parser):
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="pytorch, or onnxruntime for a folder written by ita-export (CPU, float32); auto (default): "
        "onnxruntime when --model is such a folder",
    )


def _add_task_arguments(parser):
    group = parser.add_argument_group("panoptic and instance segmentation")
    group.add_argument(
        "--task",
        choices=SUBTASKS,
        default="semantic",
        help="semantic: a class per pixel (default); panoptic: a segment per thing instance and per stuff class; "
        "instance: scored, possibly overlapping instances",
    )
    group.add_argument(
        "--stuff",
        nargs="+",
        metavar="CLASS",
        help="the classes that are stuff (merged into one segment per class; no instances), written as in the "
        "vocabulary; by default every class is a thing",
    )
    group.add_argument(
        "--threshold",
        type=float,
        help="panoptic: class probability a query must exceed (default 0.8); instance: score an instance must "
        "reach (default 0.5)",
    )



def segment(argv=None, prog="ita-segment"):
    """`ita-segment`: returns the exit status (0 done, 1 some image or the model failed, 2 usage error)."""
    args = segment_parser(prog).parse_args(argv)
    from ita_segmentation.apps.cli import run

    return run(args, prog)


# --------------------------------------------------------------------------------------------------- evaluate
def _benchmark_name(value):
    key = value.lower().replace("-", "").replace("_", "")
    for name, display_name in BENCHMARK_NAMES.items():
        if key in (name, display_name.lower().replace("-", "")):
            return name
    raise argparse.ArgumentTypeError(f"unknown benchmark {value!r}; registered: {', '.join(BENCHMARK_NAMES)}")


def evaluate_parser(prog="ita-evaluate"):
    parser = argparse.ArgumentParser(
        prog=prog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""Evaluate an ITA/FC-CLIP model (mIoU, fwIoU, mACC, pACC): on the open-vocabulary benchmarks,
or on any semantic segmentation dataset with its class list.

Writes OUTPUT/<name>/results.json (scores in percent, per-class IoU and accuracy, protocol, command),
OUTPUT/<name>/per_class.csv, OUTPUT/<name>/confusion_matrix.npy and OUTPUT/results.md (every result in OUTPUT).
Every label map is checked before the model is loaded; bad files are all listed, and stop the run unless
--skip-bad-samples is given. Data-parallel: accelerate launch --multi_gpu --num_processes N scripts/evaluate.py ...""",
        epilog="""examples:
  %(prog)s --model fcclip-convnext-large --benchmark ade150 pc59 --data-dir $DETECTRON2_DATASETS --output eval/fcclip
  %(prog)s --model runs/finetune --dataset data/my_dataset --dataset-layout label_folders \\
      --vocabulary-file classes.txt --output eval/mine""",
    )
    parser.add_argument("--model", required=True, help="model folder or Hub id (ITAForOpenVocabSegmentation)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--benchmark", nargs="+", type=_benchmark_name, metavar="NAME",
        help=f"one or more of: {', '.join(BENCHMARK_NAMES)}",
    )
    what.add_argument(
        "--dataset", metavar="PATH_OR_ID",
        help="your own dataset, as scripts/train.py reads it: a Hub id, a parquet/arrow/imagefolder or "
        "save_to_disk folder, or label-map folders (ROOT/images/SPLIT + ROOT/annotations/SPLIT)",
    )
    parser.add_argument("--data-dir", type=Path, help="benchmarks: the prepared datasets root ($DETECTRON2_DATASETS)")
    parser.add_argument("--output", required=True, type=Path, help="folder for the results")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace results already in OUTPUT for the same benchmark or dataset"
    )
    parser.add_argument("--max-samples", type=int, help="evaluate only the first N images of each split")
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward pass (of one input size)")
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader processes decoding the images")
    parser.add_argument("--device", default="auto", help="torch device; auto: CUDA when available, else CPU")
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    _add_backend_argument(parser)
    parser.add_argument(
        "--vocabulary-file",
        nargs="+",
        metavar="[BENCHMARK=]FILE",
        help="the class list (`id:name,synonym,...` or `name,synonym,...` lines): required with --dataset (unless "
        "the dataset names its classes); with --benchmark it replaces FC-CLIP's (same number of classes), "
        "BENCHMARK=FILE when several benchmarks are evaluated",
    )
    parser.add_argument("--shortest-edge", type=int, help="test resolution: short side (default: the processor's)")
    parser.add_argument("--longest-edge", type=int, help="test resolution: long-side cap (default: the processor's)")
    parser.add_argument(
        "--skip-bad-samples", action="store_true",
        help="leave out the images whose label map fails the check (and say how many) instead of stopping",
    )
    own = parser.add_argument_group("your own dataset (--dataset)")
    own.add_argument("--dataset-layout", choices=EVALUATION_LAYOUTS, default="auto",
                     help="auto: what datasets.load_dataset reads, or label-map folders when the folder has them")
    own.add_argument("--ignore-index", type=int, default=255, help="label of unlabelled pixels (default: 255)")
    own.add_argument("--name", help="results subfolder and table name (default: the dataset's folder or id)")
    own.add_argument("--image-subdir", default="images", help="label_folders layout: image folder (default: images)")
    own.add_argument("--label-subdir", default="annotations", help="label_folders layout: label folder")
    hub = parser.add_argument_group("reading with datasets.load_dataset (--dataset, or --hub-dataset for a benchmark)")
    hub.add_argument("--hub-dataset", help="a benchmark's copy on the Hub or in a local parquet folder (one benchmark)")
    hub.add_argument("--split", default="validation", help="split to evaluate (default: validation)")
    hub.add_argument("--image-column", default="image")
    hub.add_argument("--label-column", default="label")
    hub.add_argument(
        "--reduce-labels", action="store_true", help="labels use 0 for other/background and classes from 1"
    )
    hub.add_argument("--cache-dir", help="datasets cache folder")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


def parse_evaluate_args(argv=None, prog="ita-evaluate"):
    """`ita-evaluate`'s arguments, checked for everything that needs no data and no model."""
    parser = evaluate_parser(prog)
    args = parser.parse_args(argv)
    if args.benchmark is not None:
        if (args.data_dir is None) == (args.hub_dataset is None):
            parser.error("with --benchmark, give either --data-dir or --hub-dataset")
        if args.hub_dataset is not None and len(args.benchmark) != 1:
            parser.error("--hub-dataset holds one benchmark: give one --benchmark name")
        if len(set(args.benchmark)) != len(args.benchmark):
            parser.error(f"a benchmark is listed twice: {' '.join(args.benchmark)}")
    else:
        for option in ("data_dir", "hub_dataset"):
            if getattr(args, option) is not None:
                parser.error(f"--{option.replace('_', '-')} goes with --benchmark; --dataset names the data itself")
        if args.vocabulary_file is not None and len(args.vocabulary_file) != 1:
            parser.error("--dataset takes one --vocabulary-file")
    for option in ("max_samples", "batch_size", "shortest_edge", "longest_edge"):
        value = getattr(args, option)
        if value is not None and value < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1")
    if args.num_workers < 0:
        parser.error("--num-workers must be at least 0")
    args.vocabulary_files = _vocabulary_files(parser, args.vocabulary_file or [], args.benchmark)
    for path in args.vocabulary_files.values():
        if not path.is_file():
            parser.error(f"--vocabulary-file {path} does not exist")
    args.command = shlex.join([prog, *(sys.argv[1:] if argv is None else argv)])
    args.prog = prog
    return args


def _vocabulary_files(parser, values, benchmarks):
    """`--vocabulary-file` values -> {benchmark name: path} (`{None: path}` for `--dataset`)."""
    if benchmarks is None:
        return {None: Path(values[0])} if values else {}
    files = {}
    for value in values:
        name, separator, path = value.rpartition("=")
        if not separator:
            if len(benchmarks) != 1 or len(values) != 1:
                parser.error("with several benchmarks, give --vocabulary-file as BENCHMARK=FILE")
            name, path = benchmarks[0], value
        try:
            name = _benchmark_name(name)
        except argparse.ArgumentTypeError as error:
            parser.error(f"--vocabulary-file: {error}")
        if name not in benchmarks:
            parser.error(f"--vocabulary-file names {name!r}, which is not among --benchmark {' '.join(benchmarks)}")
        files[name] = Path(path)
    return files


def evaluate(argv=None, prog="ita-evaluate"):
    """`ita-evaluate`: returns the exit status (0 done, 1 the data, the model or the run failed, 2 usage error)."""
    args = parse_evaluate_args(argv, prog)
    from ita_segmentation.evaluation.cli import run

    return run(args)


# ---------------------------------------------------------------------------------------------------- convert
def _json_argument(value):
    """A JSON object given inline or as the path of a .json file."""
    path = Path(value)
    text = path.read_text(encoding="utf-8") if path.suffix == ".json" and path.is_file() else value
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON (inline or a .json file): {error}") from error
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return parsed


def convert_parser(prog="ita-convert"):
    parser = argparse.ArgumentParser(
        prog=prog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""Convert an original FC-CLIP or ITA checkpoint (detectron2 .pth) into a Hugging Face model folder.

The variant and the sizes are read from the checkpoint (see ita_segmentation.hub.conversion); the values the shapes
cannot tell are printed with where they came from. detectron2 .pkl files (numpy arrays) are not supported.""",
        epilog="""examples:
  %(prog)s --checkpoint fcclip_cocopan.pth --output fcclip-convnext-large
  %(prog)s --checkpoint ita.pth --output ita-convnext-large --category-bank Category/category_tensor.pt""",
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="original .pth checkpoint")
    parser.add_argument("--output", required=True, type=Path, help="folder to write (new or empty)")
    parser.add_argument(
        "--overwrite", action="store_true", help="write into a folder that is not empty, replacing its model files"
    )
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="also upload the folder to this Hub repository")
    parser.add_argument("--private", action="store_true", help="create the Hub repository as private")
    parser.add_argument(
        "--category-bank", type=Path, help="ITA's Category/category_tensor.pt, stored as category_bank.safetensors"
    )
    parser.add_argument(
        "--clip-config",
        type=_json_argument,
        help="open_clip model config (JSON or .json file) when the CLIP is not convnext_large_d_320",
    )
    parser.add_argument(
        "--config-overrides",
        type=_json_argument,
        help="ITAConfig values that shapes cannot tell (JSON or .json file), e.g. a different train_vocabulary",
    )
    parser.add_argument(
        "--original-config",
        type=Path,
        help="the original detectron2 YAML config of the checkpoint (its _BASE_ files beside it): heads, "
        "ensemble and loss weights that shapes cannot tell",
    )
    parser.add_argument("--no-verify", action="store_true", help="skip reloading the folder to compare tensors")
    return parser


def convert(argv=None, prog="ita-convert"):
    """`ita-convert`: returns the exit status (0 written, 1 the conversion failed, 2 usage error or the upload
    failed after writing)."""
    parser = convert_parser(prog)
    args = parser.parse_args(argv)
    for option in ("checkpoint", "category_bank", "original_config"):
        path = getattr(args, option)
        if path is not None and not path.is_file():
            parser.error(f"--{option.replace('_', '-')} {path}: no such file")
    from ita_segmentation.hub.cli import run

    return run(args)


# ----------------------------------------------------------------------------------------------------- export
def export_parser(prog="ita-export"):
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Export ITA / FC-CLIP to ONNX: writes OUTPUT/model.onnx (images, their sizes and an encoded vocabulary in; "
            "the model's outputs out), OUTPUT/text_encoder.onnx (the CLIP text tower), the config and processor files "
            "and onnx_export.json, after checking the graphs against PyTorch on a sample. Load the folder with "
            "ita_segmentation.onnx.ITAOnnxModel.from_pretrained(OUTPUT). Needs the onnx extra (pip install -e '.[onnx]')."
        ),
        epilog=(
            "Example: ita-export --model path/to/checkpoint --output ita-onnx. Exit status: 0 written and checked, "
            "1 the model could not be loaded or exported, or the export does not match (nothing is written), "
            "2 usage error."
        ),
    )
    parser.add_argument("--model", required=True, help="a model folder or a Hugging Face Hub model id")
    parser.add_argument("--output", required=True, metavar="DIR", help="the ONNX model folder to write (new or empty)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty DIR, replacing files")
    parser.add_argument("--atol", type=float, default=EXPORT_ATOL,
                        help=f"check: absolute tolerance per output (default {EXPORT_ATOL})")
    parser.add_argument("--rtol", type=float, default=EXPORT_RTOL,
                        help=f"check: tolerance relative to the output's largest PyTorch value (default {EXPORT_RTOL})")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress messages")
    return parser


def export(argv=None, prog="ita-export"):
    """`ita-export` (`scripts/export_onnx.py`): returns the exit status (0 written, 1 failed or mismatched,
    2 usage error)."""
    parser = export_parser(prog)
    args = parser.parse_args(argv)
    if not (args.atol >= 0 and args.rtol >= 0):
        parser.error(f"--atol and --rtol must be >= 0, got {args.atol} and {args.rtol}")
    from ita_segmentation.onnx.cli import run

    return run(args, prog)


# ------------------------------------------------------------------------------------------------------ train
def train(argv=None, prog="ita-train"):
    """`ita-train` (`scripts/train.py`): returns the exit status (0 trained, 1 the data or the model was refused).
    The Trainer's arguments are `TrainingArguments`, which import torch, so `--help` takes as long as that."""
    from modeling_ita.loading import ModelLoadingError
    from ita_segmentation.evaluation.data_check import DataCheckError
    from ita_segmentation.training import main

    try:
        main(argv)
    except (DataCheckError, ModelLoadingError, FileExistsError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 1
    return 0
