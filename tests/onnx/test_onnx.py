"""ONNX export and onnxruntime inference (ita_segmentation/onnx/) on tiny ITA and FC-CLIP models.

The exported folders come from the README's `ita-export` command (conftest: `ita_onnx_export`,
`fcclip_onnx_export`), made once per test run. Tolerances (the measured differences are around 1e-6):
outputs within 1e-4 absolute + 1e-4 of the output's largest value, text embeddings within 1e-5, dominant
categories equal, label maps equal wherever PyTorch's top two class scores are more than 1e-4 apart.
"""

import configparser
import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from conftest import ONNX_MODELS, ONNX_SPREAD, ONNX_TEST_SIZE, save_tiny_model, tiny_config
from PIL import Image
from transformers import pipeline

import ita_cli
from ita_cli import segment as segment_main
from ita_segmentation.onnx import ITAOnnxModel
from ita_segmentation.onnx import export as onnx_export
from ita_segmentation.onnx.cli import main as export_main
from ita_segmentation.onnx.export import ITAExportMismatchError, check_export, top_two_margin
from ita_segmentation.onnx.export_kernels import deformable_attention_for_export, export_kernels
from ita_segmentation.onnx.graph import ITASegmentationGraph, segmentation_inputs, segmentation_output_names
from ita_segmentation.onnx.tracing import example_segmentation_inputs, segmentation_dynamic_shapes
from ita_segmentation.synthetic import draw_synthetic_scene
from modeling_ita import ITAForOpenVocabSegmentation, ITAProcessor, aggregation_decoder

ROOT = Path(__file__).resolve().parents[2]
OUTPUT_NAMES = ("class_queries_logits", "masks_queries_logits", "out_vocabulary_logits", "ensemble_log_probs")
ATOL = RTOL = 1e-4
LABEL_MARGIN = 1e-4
# Two vocabulary sizes: fewer candidates than ITA's 4 text-query slots (the ranking cycles), and a larger one.
VOCABULARIES = (
    ["cat", "sky"],
    ["cat,kitty", "dog", "sofa,couch", "wall", "grass", "sky", "tree,bush", "road", "car,automobile"],
)
# Two image sizes (height, width of each image of a batch): a batch of two different sizes, and a tall image.
IMAGE_BATCHES = (((60, 80), (45, 80)), ((120, 70),))


@pytest.fixture(params=["ita", "fcclip"])
def export(request):
    """(variant, PyTorch model, ITAOnnxModel, processor)."""
    source, exported = request.getfixturevalue(f"{request.param}_onnx_export")
    model = ITAForOpenVocabSegmentation.from_pretrained(source).eval()
    return request.param, model, ITAOnnxModel.from_pretrained(exported), ITAProcessor.from_pretrained(exported)


def scenes(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [draw_synthetic_scene(rng, height, width)[0] for height, width in sizes]


def assert_outputs_close(got, expected):
    for name in OUTPUT_NAMES:
        ours, theirs = getattr(got, name), getattr(expected, name)
        assert ours.shape == theirs.shape, name
        bound = ATOL + RTOL * float(theirs.abs().max())
        assert float((ours - theirs).abs().max()) <= bound, name
    if expected.dominant_category_ids is not None:
        assert torch.equal(got.dominant_category_ids, expected.dominant_category_ids)
        assert got.dominant_categories == expected.dominant_categories
    assert torch.equal(got.image_sizes, expected.image_sizes)


def assert_labels_equal_where_clear(processor, got, expected, target_sizes):
    """Label maps of `post_process_semantic_segmentation` equal wherever PyTorch's top-two margin is above
    rounding; returns the shares of such pixels and of equal labels among all pixels."""
    got_maps = processor.post_process_semantic_segmentation(got, target_sizes=target_sizes)
    expected_maps = processor.post_process_semantic_segmentation(expected, target_sizes=target_sizes)
    clear_pixels = equal_pixels = total = 0
    for index, (ours, theirs, target) in enumerate(zip(got_maps, expected_maps, target_sizes)):
        clear = top_two_margin(processor, expected, index, target) > LABEL_MARGIN
        assert torch.equal(ours[clear], theirs[clear])
        clear_pixels, equal_pixels = clear_pixels + int(clear.sum()), equal_pixels + int((ours == theirs).sum())
        total += clear.numel()
    return clear_pixels / total, equal_pixels / total


# ------------------------------------------------------------------------------------------------ the export
def test_export_writes_a_checked_model_folder(export):
    variant, model, onnx_model, _ = export
    folder = Path(onnx_model.folder)
    manifest = json.loads((folder / "onnx_export.json").read_text())
    assert manifest["variant"] == variant
    assert sorted(manifest["files"]) == sorted(path.name for path in folder.iterdir())
    assert {
        "model.onnx",
        "model.onnx.data",
        "text_encoder.onnx",
        "text_encoder.onnx.data",
        "config.json",
        "processor_config.json",
    } <= set(manifest["files"])
    assert manifest["outputs"] == segmentation_output_names(model.config)
    check = manifest["check"]
    assert check["labels"]["different"] == 0 and check["labels"]["compared"] > 0
    for name in OUTPUT_NAMES:
        assert check[name]["max_abs_diff"] <= check[name]["allowed"]

    # Dynamic axes carry their names; the vocabulary's sizes are axes too, so any vocabulary fits.
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"))
    shapes = {item.name: item.shape for item in session.get_inputs()}
    assert shapes["pixel_values"] == ["batch", 3, "32*height_blocks", "32*width_blocks"]
    assert shapes["text_classifier"][0] == "synonyms" and shapes["overlap_mask"] == ["classes"]
    if variant == "ita":
        assert shapes["dominant_category_pixel_values"] == ["batch", 3, 32, 32]
        assert shapes["name_embeddings"][0] == "candidates"
    outputs = {item.name: item.shape for item in session.get_outputs()}
    assert outputs["ensemble_log_probs"][0] == "batch" and outputs["ensemble_log_probs"][2] == "classes + 1"


def test_graphs_are_written_as_onnxruntime_optimises_them(ita_onnx_export, tmp_path):
    """The GELUs of both graphs (the ConvNeXt trunk's, the text tower's) are written in the order onnxruntime's
    optimiser fuses into single Gelu / BiasGelu nodes (no Erf survives), the einsums over map pixels are matrix
    products, and a convolution without a bias has none (not a zero bias computed at run time, which would keep it
    from onnxruntime's blocked kernels)."""
    folder = Path(ita_onnx_export[1])
    for name in ("model.onnx", "text_encoder.onnx"):
        graph = onnx.load(folder / name, load_external_data=False).graph
        written = [node.op_type for node in graph.node]
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(tmp_path / name)
        onnxruntime.InferenceSession(str(folder / name), options, providers=["CPUExecutionProvider"])
        optimized = [node.op_type for node in onnx.load(tmp_path / name, load_external_data=False).graph.node]
        assert written.count("Erf") > 0, name
        assert "Erf" not in optimized, name
        assert optimized.count("Gelu") + optimized.count("BiasGelu") == written.count("Erf"), name

        equations = {
            attribute.s.decode() for node in graph.node if node.op_type == "Einsum" for attribute in node.attribute
        }
        assert not equations & {"bqc,bchw->bqhw", "bchw,bqhw->bqc"}, name  # written as matrix products

        weights = {initializer.name for initializer in graph.initializer}
        convolutions = [node for node in graph.node if node.op_type == "Conv"]
        assert len(convolutions) > 0 or name == "text_encoder.onnx"
        for node in convolutions:
            assert len(node.input) == 2 or node.input[2] in weights, node.name


@pytest.mark.parametrize("vocabulary_index", range(len(VOCABULARIES)))
@pytest.mark.parametrize("batch_index", range(len(IMAGE_BATCHES)))
def test_outputs_equal_pytorch(export, batch_index, vocabulary_index):
    variant, model, onnx_model, processor = export
    images = scenes(IMAGE_BATCHES[batch_index], seed=batch_index)
    class_names = VOCABULARIES[vocabulary_index]
    inputs = processor(images=images, text=class_names, return_tensors="pt")
    with torch.no_grad():
        expected = model(**inputs)
    got = onnx_model(**inputs)
    assert_outputs_close(got, expected)
    clear, equal = assert_labels_equal_where_clear(processor, got, expected, [image.shape[:2] for image in images])
    # Where no mask covers a pixel every class scores 0 there (the spread test weights saturate the sigmoids), a
    # tie both runtimes give to the first class: 19-36% of the pixels are clearly decided for FC-CLIP, 66-98% ITA.
    assert clear > 0.1 and equal > 0.99
    assert len(set(got.ensemble_log_probs.argmax(-1).flatten().tolist())) > 1  # several classes: a real check


def test_vocabularies_encoded_by_the_text_tower_graph(export):
    _, model, onnx_model, _ = export
    # The last name fills the whole 77-token context: the graph was traced on shorter contexts.
    names = ["cat,kitty", "sofa", " ".join(["very"] * 80) + " long name"]
    expected, got = model.encode_vocabulary(names), onnx_model.encode_vocabulary(names)
    assert int(model.backbone.tokenize([names[-1]]).argmax(-1)) == model.backbone.context_length - 1
    for name in ("text_classifier", "name_embeddings", "text_query_embeddings"):
        if getattr(expected, name) is not None:
            torch.testing.assert_close(getattr(got, name), getattr(expected, name), atol=1e-5, rtol=0)
    assert got.synonyms == expected.synonyms and torch.equal(got.synonym_to_class, expected.synonym_to_class)
    assert torch.equal(got.overlap_mask, expected.overlap_mask)
    assert onnx_model.encode_vocabulary(names) is got  # cached


def test_category_bank_rows_make_the_text_queries(ita_onnx_export):
    """With a category bank, the chosen names' text queries come from the bank (the `text_query_embeddings`
    input), the ranking from the text tower (`name_embeddings`), as in PyTorch; a missing name warns."""
    source, exported = ita_onnx_export
    model = ITAForOpenVocabSegmentation.from_pretrained(source).eval()
    onnx_model = ITAOnnxModel.from_pretrained(exported)
    processor = ITAProcessor.from_pretrained(exported)
    generator = torch.Generator().manual_seed(0)
    bank = {name: torch.randn(model.backbone.embed_dim, generator=generator) for name in ["cat", "kitty", "dog", "sky"]}
    for runner in (model, onnx_model):
        runner.vocabulary_encoder.set_category_bank(bank)
    inputs = processor(images=scenes([(60, 80)], seed=5), text=VOCABULARIES[1], return_tensors="pt")
    with torch.no_grad(), pytest.warns(UserWarning, match="not in the category bank"):
        expected = model(**inputs)
    with pytest.warns(UserWarning, match="not in the category bank"):
        got = onnx_model(**inputs)
    vocabulary = onnx_model.encode_vocabulary(VOCABULARIES[1])
    assert not torch.equal(vocabulary.text_query_embeddings, vocabulary.name_embeddings)
    assert_outputs_close(got, expected)


def test_ita_views_default_to_the_pytorch_fallback(ita_onnx_export):
    source, exported = ita_onnx_export
    model = ITAForOpenVocabSegmentation.from_pretrained(source).eval()
    onnx_model = ITAOnnxModel.from_pretrained(exported)
    processor = ITAProcessor.from_pretrained(exported)
    inputs = processor(images=scenes([(60, 80)]), return_tensors="pt")
    del inputs["dominant_category_pixel_values"]  # both make the views from pixel_values
    with torch.no_grad():
        expected = model(**inputs, class_names=VOCABULARIES[1], return_dict=False)
    got = onnx_model(**inputs, class_names=VOCABULARIES[1], return_dict=False)
    assert isinstance(got, tuple) and len(got) == len(expected)
    torch.testing.assert_close(got[0], expected[0], atol=ATOL, rtol=RTOL)


def test_runtime_refuses_what_the_graph_cannot_do(ita_onnx_export, tmp_path):
    _, exported = ita_onnx_export
    onnx_model = ITAOnnxModel.from_pretrained(exported)
    pixel_values = torch.zeros(1, 3, 64, 96)
    with pytest.raises(ValueError, match="multiples of 32"):
        onnx_model(pixel_values=torch.zeros(1, 3, 64, 80), class_names=["cat"])
    with pytest.raises(ValueError, match="takes no mask_labels"):
        onnx_model(pixel_values=pixel_values, mask_labels=[torch.zeros(1, 64, 96)], class_labels=[torch.zeros(1)])
    with pytest.raises(ValueError, match="takes no dominant_category_ids"):
        onnx_model(pixel_values=pixel_values, dominant_category_ids=torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="32x32 views"):
        onnx_model(pixel_values=pixel_values, dominant_category_pixel_values=torch.zeros(1, 3, 48, 48))
    with pytest.raises(TypeError, match="'class_name' \\(did you mean 'class_names'"):
        onnx_model(pixel_values=pixel_values, class_name=["cat"])
    with pytest.raises(ValueError, match="runs on the CPU"):
        onnx_model.to("cuda")
    assert onnx_model.to("cpu") is onnx_model
    with pytest.raises(ValueError, match="not an exported ONNX model folder"):
        ITAOnnxModel.from_pretrained(tmp_path)
    incomplete = tmp_path / "incomplete"
    shutil.copytree(exported, incomplete)
    (incomplete / "text_encoder.onnx").unlink()
    with pytest.raises(ValueError, match="lacks text_encoder.onnx"):
        ITAOnnxModel.from_pretrained(incomplete)


def test_the_onnx_extra_stays_optional(ita_onnx_export, tmp_path, monkeypatch):
    """No module of the package imports the extra's packages when it is imported; using them without the extra
    raises an ImportError naming it."""
    import ast

    for path in (ROOT / "modeling_ita").rglob("*.py"):
        for node in ast.parse(path.read_text()).body:  # module level only
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            assert not [
                name for name in names if name.split(".")[0] in ("onnx", "onnxscript", "onnxruntime", "onnx_ir")
            ], path

    source, exported = ita_onnx_export
    for name in ("onnx", "onnxscript", "onnxruntime"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    with pytest.raises(ImportError, match="ITAOnnxModel needs onnxruntime.*pip install 'ita-segmentation\\[onnx\\]'"):
        ITAOnnxModel.from_pretrained(exported)
    with pytest.raises(ImportError, match="ita-export needs onnx.*the `onnx` extra"):
        onnx_export.export_onnx(exported, tmp_path / "out")
    assert ita_cli.export(["--model", str(source), "--output", str(tmp_path / "out")]) == 2


# ------------------------------------------------------------------------------------------------ the command
def test_export_command_refuses_bad_input(ita_onnx_export, tmp_path, capsys):
    source, _ = ita_onnx_export
    assert ita_cli.export(["--model", str(tmp_path / "no-such-model"), "--output", str(tmp_path / "out"), "-q"]) == 2
    assert "no-such-model does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("keep me")
    assert ita_cli.export(["--model", str(source), "--output", str(tmp_path / "full"), "-q"]) == 2
    error = capsys.readouterr().err
    assert "full is not empty" in error and "--overwrite" in error
    assert [path.name for path in (tmp_path / "full").iterdir()] == ["notes.txt"]
    with pytest.raises(SystemExit) as exit_info:  # a usage error, found by the argument parser
        export_main(["--model", str(source), "--output", str(tmp_path / "out"), "--atol", "-1"])
    assert exit_info.value.code == 2 and "--atol and --rtol must be >= 0" in capsys.readouterr().err


def test_export_command_refuses_an_export_that_does_not_match(ita_onnx_export, tmp_path, monkeypatch, capsys):
    """The graphs of one model written for another of the same shape (weights of another seed): the check fails,
    the command exits 1 and names the differences, and the output folder is not created."""
    source, exported = ita_onnx_export
    other = save_tiny_model(
        tmp_path / "other-seed", size=ONNX_TEST_SIZE, spread_weights=ONNX_SPREAD["ita"], seed=1, **ONNX_MODELS["ita"]
    )

    def copy_graph(name):
        def write(model, path, *args, **kwargs):
            shutil.copy2(exported / name, path)
            shutil.copy2(exported / f"{name}.data", Path(path).parent / f"{name}.data")

        return write

    monkeypatch.setattr(onnx_export, "export_segmentation_graph", copy_graph("model.onnx"))
    monkeypatch.setattr(onnx_export, "export_text_encoder", copy_graph("text_encoder.onnx"))
    assert ita_cli.export(["--model", str(other), "--output", str(tmp_path / "out"), "-q"]) == 1
    error = capsys.readouterr().err
    assert (
        "do not match PyTorch" in error and "text_encoder:text_classifier" in error and "Nothing was written" in error
    )
    assert not (tmp_path / "out").exists()
    assert not [path for path in tmp_path.iterdir() if ".partial-" in path.name]  # the staging folder is gone


def test_check_export_names_differences_beyond_tolerance(ita_onnx_export):
    source, exported = ita_onnx_export
    model = ITAForOpenVocabSegmentation.from_pretrained(source).eval()
    onnx_model, processor = ITAOnnxModel.from_pretrained(exported), ITAProcessor.from_pretrained(exported)
    report = check_export(model, processor, onnx_model)
    assert report["ensemble_log_probs"]["max_abs_diff"] < 1e-4
    strict = onnx_export.Tolerances(atol=0.0, rtol=0.0)
    with pytest.raises(ITAExportMismatchError, match="max \\|onnx - pytorch\\|"):
        check_export(model, processor, onnx_model, tolerances=strict)


def test_pooling_flips_names_the_queries_binarised_differently(ita_onnx_export):
    """The check leaves out the out-of-vocabulary logits of queries whose mask lands on the other side of 0 at the
    CLIP features' size: only those queries are named."""
    model = ITAForOpenVocabSegmentation.from_pretrained(ita_onnx_export[0]).eval()
    stride = model.backbone.clip_model.visual.trunk.feature_info[-1]["reduction"]
    pixel_values = torch.zeros(1, 3, 2 * stride, 3 * stride)
    expected = torch.tensor([1.0, -1.0, -1e-6, 2e-3])[None, :, None, None].expand(1, 4, stride // 2, 3 * stride // 4)
    got = expected + torch.tensor([1e-6, 1e-6, 2e-6, -1e-6])[None, :, None, None]
    got[0, 3, 0, 0] = -1e-3  # one grid pixel of a query whose resized mask stays positive everywhere
    flips = onnx_export.pooling_flips(
        model, pixel_values, SimpleNamespace(masks_queries_logits=got), SimpleNamespace(masks_queries_logits=expected)
    )
    assert flips.tolist() == [[False, False, True, False]]


@pytest.mark.parametrize("offset", [1e-5, 1e4])
def test_check_runs_pytorch_on_the_graphs_attention_masks_where_they_flip(ita_onnx_export, monkeypatch, offset):
    """PyTorch's decoder attention masks made to differ from the graph's for one query at every layer, its mask
    logits moved to `offset` on the other side of 0: within rounding of 0 (1e-5) the check runs PyTorch on the
    graph's masks, counts the cells and passes; beyond the mask logits' tolerance (1e4; atol + rtol x their largest
    value is about 8 on this tiny model) it names them."""
    source, exported = ita_onnx_export
    model = ITAForOpenVocabSegmentation.from_pretrained(source).eval()
    onnx_model, processor = ITAOnnxModel.from_pretrained(exported), ITAProcessor.from_pretrained(exported)
    own = aggregation_decoder.attention_mask_logits

    def flipped_for_query_0(mask_logits, size=None):
        logits = own(mask_logits, size).clone()
        logits[:, 0] = -logits[:, 0].sign() * offset
        return logits

    monkeypatch.setattr(aggregation_decoder, "attention_mask_logits", flipped_for_query_0)
    if offset > 1:
        with pytest.raises(ITAExportMismatchError, match="decoder attention masks: \\d+ cells"):
            check_export(model, processor, onnx_model)
        return
    report = check_export(model, processor, onnx_model)
    flips = report["attention_mask_flips"]
    assert flips["far"] == 0 and 0 < flips["cells"] < flips["of"]
    assert report["class_queries_logits"]["max_abs_diff"] < 1e-4
    assert not [path for path in Path(exported).iterdir() if path.name.startswith(".attention-masks")]


def test_console_script_is_declared():
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    assert "ita-export = ita_cli:export" in setup["options.entry_points"]["console_scripts"]
    extras = setup["options.extras_require"]
    for package in ("onnx", "onnxscript", "onnxruntime"):
        assert package in extras["onnx"] and package in extras["test"]
    assert "from ita_cli import export as main" in (ROOT / "scripts" / "export_onnx.py").read_text()
    from ita_segmentation import backends
    from ita_segmentation.onnx import BACKENDS, options

    # `--help` answers without importing torch, so the defaults it shows are kept light and must be the exporter's.
    assert (options.DEFAULT_ATOL, options.DEFAULT_RTOL) == (
        onnx_export.DEFAULT_TOLERANCES.atol,
        onnx_export.DEFAULT_TOLERANCES.rtol,
    )
    assert backends.BACKENDS == BACKENDS
    with pytest.raises(SystemExit) as exit_info:
        export_main(["--help"])
    assert exit_info.value.code == 0


# ------------------------------------------------------------------------------------------------ the apps
def test_pipeline_command_line_and_evaluation_take_the_onnx_folder(fcclip_onnx_export, tmp_path, capsys):
    source, exported = fcclip_onnx_export
    image = scenes([(60, 80)], seed=3)[0]
    labels = ["red circle", "blue square", "green background"]
    expected = pipeline("zero-shot-image-segmentation", model=str(source))(image, candidate_labels=labels)
    segmenter = pipeline("zero-shot-image-segmentation", model=ITAOnnxModel.from_pretrained(exported))
    assert segmenter.image_processor.size == expected_processor_size()  # the folder's processor
    got = segmenter(image, candidate_labels=labels)
    assert np.mean(got["label_map"] == expected["label_map"]) > 0.99

    Image.fromarray(image).save(tmp_path / "scene.png")
    assert (
        segment_main(
            [
                str(tmp_path / "scene.png"),
                "--model",
                str(exported),
                "--labels",
                *labels,
                "--output",
                str(tmp_path / "out"),
                "--quiet",
            ]
        )
        == 0
    )
    written = np.asarray(Image.open(tmp_path / "out" / "scene_labels.png"))
    np.testing.assert_array_equal(written, got["label_map"])
    assert (
        segment_main(
            [
                str(tmp_path / "scene.png"),
                "--model",
                str(exported),
                "--labels",
                "cat",
                "--backend",
                "onnxruntime",
                "--dtype",
                "bfloat16",
                "--output",
                str(tmp_path / "out2"),
            ]
        )
        == 2
    )
    assert "computes in float32" in capsys.readouterr().err

    from ita_segmentation.evaluation.runner import load_model_and_processor

    onnx_model, processor = load_model_and_processor(exported)
    assert isinstance(onnx_model, ITAOnnxModel) and processor.image_processor.size == expected_processor_size()
    with pytest.raises(ValueError, match="computes in float32"):
        load_model_and_processor(exported, dtype="bfloat16")


def expected_processor_size():
    from transformers.image_utils import SizeDict

    return SizeDict(**ONNX_TEST_SIZE)


def test_evaluation_script_on_the_onnx_folder(fcclip_onnx_export, tmp_path):
    from evaluation.test_evaluate_script import write_split  # tests/evaluation, a namespace package here

    import ita_cli

    source, exported = fcclip_onnx_export
    write_split(tmp_path / "data", "pas21", image_sizes=[(40, 30), (30, 45)])
    results = {}
    for name, model in (("pytorch", source), ("onnx", exported)):
        status = ita_cli.evaluate(
            [
                "--model",
                str(model),
                "--benchmark",
                "pas21",
                "--data-dir",
                str(tmp_path / "data"),
                "--output",
                str(tmp_path / name),
                "--num-workers",
                "0",
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        assert status == 0
        results[name] = json.loads((tmp_path / name / "pas21" / "results.json").read_text())
    assert results["onnx"]["scores"]["mIoU"] == pytest.approx(results["pytorch"]["scores"]["mIoU"], abs=0.05)


# ------------------------------------------------------------------------------------------------ torch.export
@pytest.mark.slow  # the dynamic export of every ONNX test covers it
def test_fcclip_traces_with_static_shapes():
    """`torch.export` without dynamic axes (sizes frozen to the example's) gives the eager outputs."""
    torch.manual_seed(0)
    model = ITAForOpenVocabSegmentation(tiny_config(**ONNX_MODELS["fcclip"])).eval()
    vocabulary = model.encode_vocabulary(VOCABULARIES[1])
    inputs = segmentation_inputs(model.config, torch.randn(1, 3, 64, 96), torch.tensor([[60, 90]]), vocabulary)
    graph = ITASegmentationGraph(model).eval()
    with torch.no_grad():
        program = torch.export.export(graph, (), inputs, strict=False)
        got, expected = program.module()(**inputs), graph(**inputs)
    for ours, theirs in zip(got, expected):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_ita_dense_features_traces_with_dynamic_shapes():
    """`dominant_category_features="dense_features"` (no view input) under dynamic axes: the traced graph at
    another batch, image size and vocabulary gives the eager outputs."""
    torch.manual_seed(0)
    model = ITAForOpenVocabSegmentation(
        tiny_config(**ONNX_MODELS["ita"], dominant_category_features="dense_features")
    ).eval()
    graph = ITASegmentationGraph(model).eval()
    example = example_segmentation_inputs(model, 32)
    with torch.no_grad():
        program = torch.export.export(
            graph, (), example, dynamic_shapes=segmentation_dynamic_shapes(model.config, 32), strict=False
        )
        vocabulary = model.encode_vocabulary(VOCABULARIES[1])
        inputs = segmentation_inputs(
            model.config, torch.randn(3, 3, 96, 64), torch.tensor([[96, 64], [80, 50], [70, 64]]), vocabulary
        )
        got, expected = program.module()(**inputs), graph(**inputs)
    for ours, theirs in zip(got, expected):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ export kernels
def test_exported_deformable_attention_gives_the_same_values():
    """What `torch.export` traces (offsets as rows, the normaliser and reference points repeated to them; the sum
    over points in one product) computes the same values as the eager kernel and the plain formula."""
    from modeling_ita import kernels

    generator = torch.Generator().manual_seed(2)
    shapes = [(3, 5), (4, 2), (1, 6)]
    batch, queries, heads, head_dim, levels, points = 2, 7, 2, 3, len(shapes), 3
    value = torch.randn(batch, sum(h * w for h, w in shapes), heads, head_dim, generator=generator)
    reference_points = torch.rand(1, queries, 2, generator=generator)
    offsets = torch.randn(batch, queries, heads, levels, points, 2, generator=generator) * 2
    logits = torch.randn(batch, queries, heads, levels * points, generator=generator)
    arguments = (value, reference_points, offsets, logits, shapes)
    eager = kernels.deformable_attention_fast(*arguments)
    torch.testing.assert_close(deformable_attention_for_export(*arguments), eager, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(kernels.deformable_attention_reference(*arguments), eager, atol=1e-5, rtol=1e-5)


def test_export_kernels_replace_the_model_s_only_within_the_graph():
    """The graph module computes with the export kernels (whatever the fast-path switch says) and gives the eager
    model's outputs; outside it the model runs its own kernels again."""
    from modeling_ita import kernels

    torch.manual_seed(0)
    model = ITAForOpenVocabSegmentation(
        tiny_config(**ONNX_MODELS["ita"], dominant_category_features="dense_features")
    ).eval()
    vocabulary = model.encode_vocabulary(VOCABULARIES[1])
    inputs = segmentation_inputs(
        model.config, torch.randn(2, 3, 64, 96), torch.tensor([[64, 96], [40, 70]]), vocabulary
    )
    seen = []
    own = kernels.REGISTRY["image_region_means"].reference
    with export_kernels():
        assert kernels.implementation("top_k_cycled").__name__ == "top_k_cycled_for_export"
        assert kernels.implementation("conv2d") is kernels.conv2d_reference
    assert kernels.implementation("top_k_cycled").__name__ == "top_k_cycled"
    graph = ITASegmentationGraph(model).eval()
    with torch.no_grad():
        original = kernels.REGISTRY["image_region_means"]
        try:
            original.reference = lambda *args: seen.append("eager") or own(*args)
            got = graph(**inputs)
            assert not seen  # the graph pooled with the export kernel
            expected = model(
                **{k: v for k, v in inputs.items() if k in ("pixel_values", "image_sizes")}, vocabulary=vocabulary
            )
            assert seen == ["eager"]
        finally:
            original.reference = own
    for name, ours in zip(segmentation_output_names(model.config), got, strict=True):
        torch.testing.assert_close(ours, getattr(expected, name), atol=1e-5, rtol=1e-5)
