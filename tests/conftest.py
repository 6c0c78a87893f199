"""A tiny ITA configuration shared by the tests: a `test_convnext` CLIP trunk and a 2-layer text tower."""

import os
import textwrap

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch

from ita_segmentation.synthetic import toy_clip_config, toy_config

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on two cores: one thread each avoids oversubscription, which stalls torch.
    torch.set_num_threads(1)

TINY_CLIP_CONFIG = toy_clip_config(width=32, heads=2)

# `accelerate launch` options that start two processes on one machine, CPU processes (gloo) where there is no GPU
# (accelerate 1.15's launcher has no --use_cpu; the commands pick CPU processes themselves).
TWO_LOCAL_PROCESSES = [
    "--multi_gpu",
    "--num_processes",
    "2",
    "--num_machines",
    "1",
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
]

TINY_TRAIN_VOCABULARY = ["cat,kitty", "dog", "sofa,couch", "wall", "grass", "sky"]


def tiny_config(**overrides):
    """ITA at toy size; `tiny_config(num_dominant_categories=0, num_queries=8, decoder_self_attention=True)`
    gives FC-CLIP."""
    values = dict(
        clip_config=TINY_CLIP_CONFIG,
        num_queries=6,
        dominant_category_image_size=32,
        train_vocabulary=TINY_TRAIN_VOCABULARY,
        train_num_points=64,
    )
    values.update(overrides)
    return toy_config(width=32, **values)


@pytest.fixture
def config():
    return tiny_config()


@pytest.fixture
def fcclip_config():
    return tiny_config(num_dominant_categories=0, num_queries=8, decoder_self_attention=True)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _vocabulary_cache(tmp_path_factory):
    """Encoded vocabularies go to a folder of this test session, never to the user's Hugging Face home (the
    variable reaches the commands the tests run in subprocesses too)."""
    previous = os.environ.get("ITA_VOCABULARY_CACHE")
    os.environ["ITA_VOCABULARY_CACHE"] = str(tmp_path_factory.mktemp("vocabulary-cache"))
    yield
    if previous is None:
        os.environ.pop("ITA_VOCABULARY_CACHE", None)
    else:
        os.environ["ITA_VOCABULARY_CACHE"] = previous


def save_tiny_model(folder, size=None, spread_weights=False, seed=0, **config_overrides):
    """Save a tiny ITA (or with `config_overrides`, e.g. FC-CLIP's, another tiny model) and its processor into
    `folder`, loadable with AutoModel/AutoProcessor.

    `spread_weights` redraws the weight matrices with std 1: at their init scale the random tiny model gives
    every pixel one class, which hides bugs that only show with several classes. A tuple of parameter-name
    prefixes redraws only those matrices."""
    from image_processing_ita import ITAImageProcessor
    from modeling_ita import ITAForOpenVocabSegmentation, ITAProcessor

    torch.manual_seed(seed)
    model = ITAForOpenVocabSegmentation(tiny_config(**config_overrides))
    if spread_weights:
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if parameter.ndim > 1 and (spread_weights is True or name.startswith(tuple(spread_weights))):
                    parameter.normal_(0.0, 1.0)
    model.save_pretrained(folder)
    size = size or {"shortest_edge": 96, "longest_edge": 160}
    ITAProcessor(image_processor=ITAImageProcessor.for_model_config(model.config, size=size)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved tiny ITA + processor (shortest edge 96, longest 160), shared by the tests that load from disk."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-ita"))


# ---------------------------------------------------------------------------------------------------- ONNX
FCCLIP_OVERRIDES = dict(num_dominant_categories=0, num_queries=8, decoder_self_attention=True)
ONNX_TEST_SIZE = {"shortest_edge": 96, "longest_edge": 160}
# The exported test models: one deformable encoder layer (tracing `grid_sample` with symbolic sizes costs
# seconds per call, and the layers all trace alike).
ONNX_MODELS = {
    "ita": dict(pixel_decoder_encoder_layers=1),
    "fcclip": dict(FCCLIP_OVERRIDES, pixel_decoder_encoder_layers=1),
}
# The exported test models predict several classes (4-5 on a generated scene) when these matrices are spread
# (std 1); spreading every matrix would too, but it also blows the logits up to where float32 rounding alone
# moves them by more than 1e-4 of their range.
ONNX_SPREAD = {
    "ita": ("decoder.mask_embed", "decoder.class_embed"),
    "fcclip": ("decoder.mask_embed", "decoder.class_embed", "decoder.query_feat", "decoder.query_embed"),
}


def readme_export_command():
    """The README's `ita-export` example, as arguments with MODEL and the output folder left as placeholders."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.DOTALL)
    line = next(line for block in blocks for line in block.splitlines() if line.startswith("ita-export "))
    return line.split("#")[0].split()[1:]


# The vocabulary the ONNX test models' folders store (`vocabularies/`) before they are exported.
ONNX_STORED_VOCABULARY = ["cat,kitty", "sofa,couch", "wall"]


def store_vocabulary_in(folder):
    from modeling_ita import ITAForOpenVocabSegmentation

    ITAForOpenVocabSegmentation.from_pretrained(folder).store_vocabularies(folder, [ONNX_STORED_VOCABULARY])


def _export_once(tmp_path_factory, name):
    """A tiny model folder and its ONNX export made by the README's `ita-export` command, once per test run: the
    pytest-xdist workers share them through locks (an export takes a minute or so). A worker that finds its
    export under way in another worker makes the other variant's meanwhile instead of waiting."""
    import os

    from filelock import FileLock, Timeout

    from ita_segmentation.onnx.cli import main

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by the workers of this run

    def paths(variant):
        return root / f"onnx-{variant}-source", root / f"onnx-{variant}"

    def make(variant):
        source, exported = paths(variant)
        if (exported / "onnx_export.json").is_file():
            return
        save_tiny_model(source, size=ONNX_TEST_SIZE, spread_weights=ONNX_SPREAD[variant], **ONNX_MODELS[variant])
        store_vocabulary_in(source)  # the export carries the vocabularies stored in its model folder
        arguments = readme_export_command()
        arguments = [str(source) if a == "MODEL" else str(exported) if a == "ita-onnx" else a for a in arguments]
        status = main([*arguments, "--quiet"])
        assert status == 0, f"ita-export {' '.join(arguments)} exited with {status}"

    def lock(variant):
        return FileLock(str(root / f"onnx-{variant}.lock"))

    own = lock(name)
    try:
        own.acquire(timeout=0)
    except Timeout:
        for other in ONNX_MODELS:
            other_lock = lock(other)
            if other == name or (paths(other)[1] / "onnx_export.json").is_file():
                continue
            try:
                other_lock.acquire(timeout=0)
            except Timeout:
                continue
            try:
                make(other)
            finally:
                other_lock.release()
        own.acquire()
    try:
        make(name)
    finally:
        own.release()
    return paths(name)


@pytest.fixture(scope="session")
def ita_onnx_export(tmp_path_factory):
    """(tiny ITA folder, its ONNX folder)."""
    return _export_once(tmp_path_factory, "ita")


@pytest.fixture(scope="session")
def fcclip_onnx_export(tmp_path_factory):
    """(tiny FC-CLIP folder, its ONNX folder)."""
    return _export_once(tmp_path_factory, "fcclip")


# The start of a script run in a subprocess that must not see this package (trust_remote_code tests): every
# project module is hidden from the import system, and the script stops if one is still importable.
WITHOUT_THE_PACKAGE = textwrap.dedent(
    """
    import importlib.abc, json, sys

    BLOCKED = ("modeling_ita", "configuration_ita", "image_processing_ita", "postprocessing_ita", "processing_ita")

    class BlockPackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)")
            return None

    sys.meta_path.insert(0, BlockPackage())
    for name in BLOCKED:
        try:
            __import__(name)
        except ImportError:
            pass
        else:
            raise SystemExit(f"{name} is still importable")
    """
)
