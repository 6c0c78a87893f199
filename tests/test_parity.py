"""Golden outputs of the original FC-CLIP and ITA code (tests/data/parity, see its README), stage by stage.

Each original checkpoint is converted with the real converter, loaded with the Auto classes, and run through the
processor, the model and the post-processing on the fixture's image and vocabulary; every stage is compared
with what the original code computed, within the fixture's tolerances.
"""

import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoProcessor

import modeling_ita  # noqa: F401  (registers the Auto classes)
from ita_segmentation.hub.conversion import load_category_bank
from ita_segmentation.hub.folder import CATEGORY_BANK_FILE, CATEGORY_BANK_SNIPPET
from modeling_ita import kernels

ROOT = Path(__file__).resolve().parent.parent

PARITY = Path(__file__).resolve().parent / "data" / "parity"
META = json.loads((PARITY / "meta.json").read_text())
INPUTS = load_file(PARITY / "inputs.safetensors")
VOCABULARY = META["vocabulary"]
OUTPUT_SIZE = tuple(META["output_size"])
# What the converter cannot read from a checkpoint and the fixture's original used: its 3 prompt templates.
TEMPLATES = json.dumps({"prompt_templates": META["prompt_templates"]})


def convert_main(argv):
    """`scripts/convert_checkpoint.py`'s main, the converter's command line."""
    spec = importlib.util.spec_from_file_location(
        "convert_checkpoint_script", ROOT / "scripts" / "convert_checkpoint.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script.main(argv)


def atol(name):
    """The fixture's suggested tolerance for a stage: the longest matching name prefix."""
    prefixes = [prefix for prefix in META["suggested_atol"] if name.startswith(prefix)]
    return META["suggested_atol"][max(prefixes, key=len)]


def assert_stage(name, actual, expected):
    actual = actual.detach().float().reshape(expected.shape)
    difference = (actual - expected.float()).abs().max().item()
    assert difference <= atol(name), f"{name}: max |difference| {difference:.3g} > {atol(name):.3g}"


def run(model, processor, **model_kwargs):
    image = INPUTS["image"].permute(1, 2, 0).numpy()  # [H, W, 3] uint8
    inputs = processor(images=image, text=VOCABULARY, do_resize=False, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs, output_auxiliary_logits=True, **model_kwargs)
    return inputs, outputs


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Both checkpoints converted by `scripts/convert_checkpoint.py` with the toy CLIP config and templates."""
    root = tmp_path_factory.mktemp("parity")
    folders = {}
    for variant in ("fcclip", "ita"):
        folder = root / variant
        argv = ["--checkpoint", str(PARITY / f"{variant}_original.pth"), "--output", str(folder)]
        argv += ["--clip-config", str(PARITY / "clip_config.json"), "--config-overrides", TEMPLATES]
        if variant == "ita":
            argv += ["--category-bank", str(PARITY / "category_bank.pt")]
        assert convert_main(argv) == 0
        folders[variant] = folder
    return folders


@pytest.fixture(params=[True, False], ids=["fast_paths", "reference_paths"])
def fast_paths(request):
    """Each golden-output test runs with the model's fast paths on, then with every one of them off."""
    with kernels.use_fast_paths(request.param):
        yield request.param


def load(folder, bank=True):
    model = AutoModel.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    if bank and (Path(folder) / CATEGORY_BANK_FILE).is_file():
        # Activated as the model card says.
        exec(CATEGORY_BANK_SNIPPET, {"bank_file": str(Path(folder) / CATEGORY_BANK_FILE), "model": model})
    return model, processor


@pytest.mark.parametrize("variant", ["fcclip", "ita"])
def test_converter_reads_what_shapes_cannot_tell_from_the_original_rules(converted, variant):
    config = AutoModel.from_pretrained(converted[variant]).config
    port = META["port_config"][variant]
    # 48 deformable attention weights fit 8 heads x 2 points and 4 x 4: the original's 4 points decide.
    for field in ("pixel_decoder_attention_heads", "pixel_decoder_num_points", "decoder_attention_heads"):
        assert getattr(config, field) == port[field], field
    assert config.dominant_category_image_size == META["port_config_overrides"]["dominant_category_image_size"]


@pytest.mark.parametrize("variant", ["fcclip", "ita"])
def test_every_stage_matches_the_original(converted, variant, fast_paths):
    expected = load_file(PARITY / f"{variant}_expected.safetensors")
    model, processor = load(converted[variant])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no chosen name is missing from the bank here: no warning
        inputs, outputs = run(model, processor)
    torch.testing.assert_close(inputs["pixel_values"], INPUTS["pixel_values"], atol=atol("pixel_values"), rtol=0)

    features = model.backbone.extract_features(inputs["pixel_values"])
    for name in ("res2", "res3", "res4", "res5", "clip_vis_dense"):
        assert_stage(f"clip.{name}", getattr(features, name), expected[f"clip.{name}"])

    vocabulary = model.encode_vocabulary(VOCABULARY)
    assert_stage("text_classifier", vocabulary.text_classifier, expected["text_classifier"])

    with torch.no_grad():
        pixel_decoded = model.pixel_decoder(features.feature_maps)
    assert_stage("pixel_decoder.mask_features", pixel_decoded.mask_features, expected["pixel_decoder.mask_features"])
    assert len(pixel_decoded.multi_scale_features) == 3
    for level, maps in enumerate(pixel_decoded.multi_scale_features):
        assert_stage(f"pixel_decoder.multi_scale.{level}", maps, expected[f"pixel_decoder.multi_scale.{level}"])

    assert_stage("decoder.pred_logits", outputs.class_queries_logits, expected["decoder.pred_logits"])
    assert_stage("decoder.pred_masks", outputs.masks_queries_logits, expected["decoder.pred_masks"])
    assert len(outputs.auxiliary_logits) == 3
    for level, auxiliary in enumerate(outputs.auxiliary_logits):
        assert_stage(
            f"decoder.aux.{level}", auxiliary.class_queries_logits, expected[f"decoder.aux.{level}.pred_logits"]
        )
        assert_stage(
            f"decoder.aux.{level}", auxiliary.masks_queries_logits, expected[f"decoder.aux.{level}.pred_masks"]
        )
        assert auxiliary["class_queries_logits"] is auxiliary.class_queries_logits  # still readable as a dict

    assert_stage("ovc.out_vocab_logits", outputs.out_vocabulary_logits, expected["ovc.out_vocab_logits"])
    assert_stage("ensemble.log_probs", outputs.ensemble_log_probs, expected["ensemble.log_probs"])
    assert_stage("ensemble.probs", outputs.ensemble_log_probs.softmax(-1), expected["ensemble.probs"])

    labels = processor.post_process_semantic_segmentation(outputs, target_sizes=[OUTPUT_SIZE])[0]
    with_scores = processor.post_process_semantic_segmentation(
        outputs, target_sizes=[OUTPUT_SIZE], return_segmentation_scores=True
    )[0]
    assert_stage("semantic.scores", with_scores.segmentation_scores, expected["semantic.scores"])
    assert torch.equal(with_scores.segmentation, labels)
    scores = expected["semantic.scores"]
    top2 = scores.topk(2, dim=0).values
    decided = (top2[0] - top2[1]) / top2[0] >= 1e-4  # the fixture's rule: equal wherever the original's gap is
    assert decided.float().mean() > 0.99
    assert torch.equal(labels[decided], expected["semantic.argmax"][decided])
    assert len(labels.unique()) >= 3  # the fixture spreads the argmax over several classes


def test_ita_dominant_category_stages_match_the_original(converted, fast_paths):
    expected = load_file(PARITY / "ita_expected.safetensors")
    model, processor = load(converted["ita"])
    inputs, outputs = run(model, processor)
    # The CLIP view, made by the processor as the original makes it (PIL on the 8-bit image).
    assert_stage("dcu.view", inputs["dominant_category_pixel_values"], expected["dcu.view"])
    vocabulary = model.encode_vocabulary(VOCABULARY)
    assert list(vocabulary.candidate_names) == META["dcu_candidate_names"]
    assert_stage("dcu.candidate_text_embeddings", vocabulary.name_embeddings, expected["dcu.candidate_text_embeddings"])
    with torch.no_grad():
        probs = model.dominant_categories.ranking_probabilities(
            model.backbone,
            inputs["pixel_values"],
            inputs["image_sizes"],
            vocabulary.name_embeddings,
            views=inputs["dominant_category_pixel_values"],
        )
    assert_stage("dcu.probs", probs, expected["dcu.probs"])
    assert outputs.dominant_category_ids[0].tolist() == expected["dcu.topk_indices"].tolist()
    assert outputs.dominant_categories[0] == META["runs"]["ita"]["dcu_topk_names"]
    chosen = vocabulary.text_query_embeddings[outputs.dominant_category_ids[0]]
    assert_stage("dcu.topk_bank_embeddings", chosen, expected["dcu.topk_bank_embeddings"])
    with torch.no_grad():
        text_queries = model.dominant_categories(chosen[None])
    assert_stage("dcu.text_queries", text_queries, expected["dcu.text_queries"])


def test_ita_ranking_does_not_depend_on_the_bank(converted, fast_paths):
    expected = load_file(PARITY / "ita_expected.safetensors")
    with_bank = run(*load(converted["ita"], bank=True))[1]
    without_bank = run(*load(converted["ita"], bank=False))[1]
    assert torch.equal(with_bank.dominant_category_ids, without_bank.dominant_category_ids)
    assert with_bank.dominant_category_ids[0].tolist() == expected["dcu.topk_indices"].tolist()
    # The bank changes the text queries' embeddings, and so the predictions.
    assert not torch.allclose(with_bank.class_queries_logits, without_bank.class_queries_logits)


def test_a_chosen_name_missing_from_the_bank_falls_back_with_a_warning(converted, fast_paths):
    model, processor = load(converted["ita"], bank=False)
    bank = load_category_bank(PARITY / "category_bank.pt")
    top1 = META["runs"]["ita"]["dcu_topk_names"][0]  # "yellow triangle": the original raises KeyError here
    del bank[top1]
    model.vocabulary_encoder.set_category_bank(bank)
    with pytest.warns(UserWarning, match=top1) as record:
        _, outputs = run(model, processor)
    assert len(record) == 1 and "zorblax" not in str(record[0].message)  # unchosen missing names: no word
    vocabulary = model.encode_vocabulary(VOCABULARY)
    index = vocabulary.candidate_names.index(top1)
    assert torch.equal(vocabulary.text_query_embeddings[index], vocabulary.name_embeddings[index])
    other = vocabulary.candidate_names.index("road")
    assert torch.equal(vocabulary.text_query_embeddings[other], bank["road"].float())
    assert outputs.dominant_categories[0][0] == top1


def test_processor_view_is_the_deterministic_eval_crop_of_the_resized_image():
    from image_processing_ita import ITAImageProcessor

    processor = ITAImageProcessor(size={"shortest_edge": 48, "longest_edge": 80}, dominant_category_image_size=16)
    wide = np.zeros((30, 60, 3), dtype=np.uint8)
    wide[:, 24:36] = 255  # a white band in the centre third of the columns survives the centre crop
    view = processor(wide, return_tensors="pt")["dominant_category_pixel_values"]
    assert view.shape == (1, 3, 16, 16)
    again = processor(wide, return_tensors="pt")["dominant_category_pixel_values"]
    assert torch.equal(view, again)  # no random crop, unlike the original's training transform
    white = (1 - torch.tensor([0.48145466, 0.4578275, 0.40821073])) / torch.tensor([0.26862954, 0.26130258, 0.27577711])
    torch.testing.assert_close(view[0, :, 8, 8], white)
    assert (view[0, 0, :, 0] < 0).all()  # the borders of the crop are black
    assert "dominant_category_pixel_values" not in ITAImageProcessor(dominant_category_image_size=None)(
        wide, return_tensors="pt"
    )


def test_the_golden_outputs_run_each_kernel_s_reference_when_fast_paths_are_off(converted, monkeypatch):
    """The switch really switches: with fast paths off every kernel the model calls runs its reference (each call
    counted), with them on none does."""
    model, processor = load(converted["ita"])
    before = kernels.fast_paths_enabled()
    calls = {}
    for name, entry in kernels.REGISTRY.items():
        if entry.reference is None:
            continue

        def counted(*args, _name=name, _reference=entry.reference, **kwargs):
            calls[_name] = calls.get(_name, 0) + 1
            return _reference(*args, **kwargs)

        monkeypatch.setattr(entry, "reference", counted)
    with kernels.use_fast_paths(True):
        run(model, processor)
    fast_run = dict(calls)
    with kernels.use_fast_paths(False):
        _, outputs = run(model, processor)
    assert outputs.dominant_categories[0] == META["runs"]["ita"]["dcu_topk_names"]
    with_fast_path = {name for name, entry in kernels.REGISTRY.items() if entry.fast is not None}
    assert not with_fast_path & set(fast_run)  # fast paths on: no reference of a kernel that has a fast one
    called = {name: count - fast_run.get(name, 0) for name, count in calls.items()}
    expected = {
        "ITAPixelDecoderEncoderLayer",
        "deformable_attention",
        "conv2d",
        "tokens_to_maps",
        "mask_pool",
        "image_region_means",
        "top_k_cycled",
    } - ({"image_region_means"} if model.config.dominant_category_features != "dense_features" else set())
    assert expected <= {name for name, count in called.items() if count > 0}, called
    assert kernels.fast_paths_enabled() == before  # each block restored the state it found
