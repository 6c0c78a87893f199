"""Checkpoint conversion (modeling_ita/conversion.py, ita_segmentation/hub.py, scripts/convert_checkpoint.py).

Tiny checkpoints in the original detectron2 key layout are made from our model by the inverse key mapping, with
random values, so every tensor can be traced to its new place.
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CLIP_CONFIG, WITHOUT_THE_PACKAGE, tiny_config
from transformers import AutoModel, AutoProcessor
from transformers.dynamic_module_utils import get_imports

from configuration_ita import ITAConfig
from image_processing_ita import ITAImageProcessor
from ita_segmentation.hub.conversion import (
    DROPPED_ORIGINAL_KEYS,
    CheckpointConversionError,
    convert_checkpoint,
    convert_state_dict,
    detect_variant,
    expected_state_dict_shapes,
    hf_to_original_key,
    infer_config,
    load_category_bank,
    load_original_state_dict,
    original_to_hf_key,
    read_original_config,
)
from ita_segmentation.hub.folder import CATEGORY_BANK_FILE, CATEGORY_BANK_SNIPPET, HubPushError, push_folder_to_hub
from ita_segmentation.hub.remote_code import REMOTE_CODE_FILES, export_remote_code, flat_source
from modeling_ita import ITAForOpenVocabSegmentation
from processing_ita import ITAProcessor

ROOT = Path(__file__).resolve().parents[2]
KEY_LIST = Path(__file__).resolve().parents[1] / "data" / "original_state_dict_keys.txt"
VOCABULARY = ["cat,kitty", "sofa,couch", "wall", "sky"]
BANK_NAMES = ["cat", "kitty", "sofa", "couch", "wall", "sky", "other", "tiger"]


def tiny_variant_config(variant):
    if variant == "ita":
        return tiny_config()
    return tiny_config(num_dominant_categories=0, num_queries=8, decoder_self_attention=True)


# What a tiny config sets that leaves no trace in tensor shapes: the conversion must be told.
def tiny_overrides(config):
    return dict(
        decoder_attention_heads=config.decoder_attention_heads,
        pixel_decoder_attention_heads=config.pixel_decoder_attention_heads,
        group_norm_groups=config.group_norm_groups,
        train_vocabulary=config.train_vocabulary,
        prompt_templates=config.prompt_templates,
        dominant_category_image_size=config.dominant_category_image_size,
        train_num_points=config.train_num_points,
    )


def original_state_dict(config, seed=0):
    """Random weights for `config` under the original detectron2 names, with the loss's class weights."""
    generator = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        model = ITAForOpenVocabSegmentation(config)
    state_dict = {
        hf_to_original_key(key): torch.randn(value.shape, generator=generator)
        for key, value in model.state_dict().items()
    }
    state_dict["criterion.empty_weight"] = torch.ones(len(config.train_vocabulary) + 1)
    return state_dict


def convert_tiny(state_dict, config, tmp_path, name="model", **kwargs):
    checkpoint = tmp_path / f"{name}.pth"
    torch.save({"model": state_dict, "iteration": 7}, checkpoint)
    return convert_checkpoint(
        checkpoint, tmp_path / name, clip_config=TINY_CLIP_CONFIG, config_overrides=tiny_overrides(config), **kwargs
    )


def tiny_bank(dim):
    generator = torch.Generator().manual_seed(3)
    return {name: torch.randn(1, dim, generator=generator).half() for name in BANK_NAMES}


def full_size_state_dict(variant):
    """The original full-size keys on the meta device, from tests/data/original_state_dict_keys.txt."""
    state_dict = {}
    for line in KEY_LIST.read_text().splitlines():
        if line.startswith("#"):
            continue
        which, key, shape = line.split()
        if which in ("both", variant):
            dims = [] if shape == "-" else [int(size) for size in shape.split(",")]
            state_dict[key] = torch.empty(dims, device="meta")
    return state_dict


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Tiny ITA (with a category bank) and FC-CLIP checkpoints, converted once for the module."""
    root = tmp_path_factory.mktemp("converted")
    results = {}
    for variant in ("ita", "fcclip"):
        config = tiny_variant_config(variant)
        state_dict = original_state_dict(config, seed=1 if variant == "ita" else 2)
        kwargs = {}
        if variant == "ita":
            torch.save(tiny_bank(config.clip_embed_dim), root / "category_tensor.pt")
            kwargs["category_bank"] = root / "category_tensor.pt"
        results[variant] = (convert_tiny(state_dict, config, root, name=variant, **kwargs), state_dict)
    return results


# ---------------------------------------------------------------------------------------------- key mapping
@pytest.mark.parametrize("variant", ["ita", "fcclip"])
def test_full_size_mapping_is_a_bijection_with_matching_shapes(variant):
    original = full_size_state_dict(variant)
    config, detected, _ = infer_config(original)
    assert detected == variant
    reference = ITAConfig() if variant == "ita" else ITAConfig.fcclip()
    assert config.to_diff_dict() == reference.to_diff_dict()  # every size read back from the shapes

    expected = expected_state_dict_shapes(config)
    kept = {key: value for key, value in original.items() if key not in DROPPED_ORIGINAL_KEYS}
    targets = {key: original_to_hf_key(key) for key in kept}
    assert None not in targets.values()
    assert len(set(targets.values())) == len(kept)  # one-to-one
    assert set(targets.values()) == set(expected)  # onto
    assert all(tuple(kept[key].shape) == expected[target] for key, target in targets.items())
    assert all(hf_to_original_key(target) == key for key, target in targets.items())
    assert len(expected) == (792 if variant == "ita" else 845)
    assert set(convert_state_dict(original, expected)) == set(expected)


def test_key_renames_of_the_decoder():
    assert original_to_hf_key(
        "sem_seg_head.predictor.transformer_cross_attention_layers.7.multihead_attn.in_proj_weight"
    ) == ("decoder.layers.7.cross_attention.attention.in_proj_weight")
    assert original_to_hf_key("sem_seg_head.predictor.transformer_self_attention_layers.3.norm.bias") == (
        "decoder.layers.3.self_attention.norm.bias"
    )
    assert original_to_hf_key("sem_seg_head.predictor.transformer_ffn_layers.0.linear2.weight") == (
        "decoder.layers.0.ffn.linear2.weight"
    )
    assert (
        original_to_hf_key("sem_seg_head.predictor._mask_pooling_proj.1.weight") == "decoder.mask_pooling_proj.1.weight"
    )
    assert original_to_hf_key("backbone.add_tgt_em.weight") == "dominant_categories.projection"
    assert original_to_hf_key("criterion.empty_weight") is None
    assert original_to_hf_key("backbone.add_tgt_em.weight.extra") is None  # whole-key rules match whole keys
    assert original_to_hf_key("something.else") is None


def test_variant_detection():
    ita = original_state_dict(tiny_variant_config("ita"))
    fcclip = original_state_dict(tiny_variant_config("fcclip"))
    assert detect_variant(ita) == "ita"
    assert detect_variant(fcclip) == "fcclip"

    hybrid = dict(fcclip, **{"backbone.add_tgt_em.weight": ita["backbone.add_tgt_em.weight"]})
    with pytest.raises(CheckpointConversionError, match="neither ITA nor FC-CLIP"):
        detect_variant(hybrid)
    clip_only = {key: value for key, value in ita.items() if key.startswith("backbone.clip_model.")}
    with pytest.raises(CheckpointConversionError, match="required keys are missing") as error:
        detect_variant(clip_only)
    assert "sem_seg_head.predictor.query_feat.weight" in error.value.problems


def test_infer_config_reads_tiny_sizes():
    for variant in ("ita", "fcclip"):
        config = tiny_variant_config(variant)
        inferred, _, _ = infer_config(
            original_state_dict(config), clip_config=TINY_CLIP_CONFIG, **tiny_overrides(config)
        )
        assert inferred.to_diff_dict() == config.to_diff_dict()


def test_a_clip_other_than_convnext_large_asks_for_clip_config():
    config = tiny_config()
    with pytest.raises(CheckpointConversionError, match="--clip-config") as error:
        infer_config(original_state_dict(config), **tiny_overrides(config))
    assert any("backbone.clip_model.visual.trunk.stem.0.weight" in problem for problem in error.value.problems)


def test_training_vocabulary_must_match_the_loss_weights():
    config = tiny_config()
    state_dict = original_state_dict(config)
    state_dict["criterion.empty_weight"] = torch.ones(134)
    with pytest.raises(CheckpointConversionError, match="training vocabulary"):
        infer_config(state_dict, clip_config=TINY_CLIP_CONFIG, **tiny_overrides(config))


# --------------------------------------------------------------------------------------------- conversion
@pytest.mark.parametrize("variant", ["ita", "fcclip"])
def test_every_original_tensor_is_found_at_its_new_place(variant, converted):
    result, state_dict = converted[variant]
    assert result.variant == variant and result.verified
    folder = result.output_dir
    for name in ("config.json", "model.safetensors", "processor_config.json", "README.md", "modeling_ita.py"):
        assert (folder / name).is_file(), name

    model = AutoModel.from_pretrained(folder)  # the package's classes: no trust_remote_code needed
    assert isinstance(model, ITAForOpenVocabSegmentation)
    assert isinstance(AutoProcessor.from_pretrained(folder), ITAProcessor)
    config = tiny_variant_config(variant)
    assert model.config.num_queries == config.num_queries
    assert model.config.num_dominant_categories == config.num_dominant_categories
    assert model.config.decoder_self_attention == config.decoder_self_attention
    loaded = model.state_dict()
    assert result.num_tensors == len(loaded) == len(state_dict) - 1  # criterion.empty_weight dropped
    for key, value in state_dict.items():
        if key in DROPPED_ORIGINAL_KEYS:
            continue
        assert torch.equal(loaded[original_to_hf_key(key)], value), key
    assert result.dropped_keys == ["criterion.empty_weight"]
    card = (folder / "README.md").read_text()
    assert ("# ITA " if variant == "ita" else "# FC-CLIP ") in card
    assert result.source_sha256 in card and "trust_remote_code=True" in card and "Not verified" in card


def test_bare_state_dict_is_accepted_and_pkl_refused(tmp_path):
    state_dict = original_state_dict(tiny_config())
    torch.save(state_dict, tmp_path / "bare.pth")
    assert set(load_original_state_dict(tmp_path / "bare.pth")) == set(state_dict)
    torch.save({"model": state_dict}, tmp_path / "wrapped.pth")
    assert set(load_original_state_dict(tmp_path / "wrapped.pth")) == set(state_dict)
    (tmp_path / "model_final.pkl").write_bytes(b"not read")
    with pytest.raises(ValueError, match=r"\.pkl checkpoints .* not supported"):
        load_original_state_dict(tmp_path / "model_final.pkl")


def test_missing_keys_stop_the_conversion_with_the_list(tmp_path):
    config = tiny_config()
    state_dict = original_state_dict(config)
    gone = [
        "sem_seg_head.predictor.transformer_ffn_layers.1.linear1.bias",
        "sem_seg_head.pixel_decoder.layer_1.norm.bias",
    ]
    for key in gone:
        del state_dict[key]
    with pytest.raises(CheckpointConversionError) as error:
        convert_tiny(state_dict, config, tmp_path)
    assert len(error.value.problems) == 2
    for key in gone:
        assert key in str(error.value)
    assert not (tmp_path / "model" / "model.safetensors").exists()


def test_extra_keys_stop_the_conversion_with_the_list(tmp_path):
    config = tiny_config()
    state_dict = original_state_dict(config)
    state_dict["sem_seg_head.predictor.extra_head.weight"] = torch.zeros(3)
    state_dict["pixel_mean"] = torch.zeros(3, 1, 1)
    with pytest.raises(CheckpointConversionError) as error:
        convert_tiny(state_dict, config, tmp_path)
    problems = error.value.problems
    assert len(problems) == 2
    assert any("sem_seg_head.predictor.extra_head.weight" in p and "decoder.extra_head.weight" in p for p in problems)
    assert any(p.startswith("unmapped source key pixel_mean") for p in problems)


def test_a_shape_mismatch_stops_the_conversion(tmp_path):
    config = tiny_config()
    state_dict = original_state_dict(config)
    key = "sem_seg_head.predictor.class_embed.layers.2.weight"
    state_dict[key] = torch.zeros(16, 32)
    with pytest.raises(CheckpointConversionError, match="shape mismatch") as error:
        convert_tiny(state_dict, config, tmp_path)
    assert error.value.problems == [
        f"shape mismatch: {key} [16, 32] -> decoder.class_embed.layers.2.weight expects [32, 32]"
    ]


# ------------------------------------------------------------------------------------------- category bank
def test_category_bank_round_trips(converted, tmp_path):
    result, _ = converted["ita"]
    original = torch.load(result.output_dir.parent / "category_tensor.pt", weights_only=True)
    assert result.category_bank_size == len(BANK_NAMES)
    for path in (result.output_dir / CATEGORY_BANK_FILE, result.output_dir.parent / "category_tensor.pt"):
        bank = load_category_bank(path)
        assert list(bank) == BANK_NAMES
        for name in BANK_NAMES:
            assert bank[name].dtype == torch.float16 and torch.equal(bank[name], original[name].reshape(-1))

    # The model card's snippet activates it: the text queries take the bank's embeddings; the ranking does not.
    model = ITAForOpenVocabSegmentation.from_pretrained(result.output_dir)
    text_tower = model.encode_vocabulary(VOCABULARY).name_embeddings
    exec(CATEGORY_BANK_SNIPPET, {"bank_file": str(result.output_dir / CATEGORY_BANK_FILE), "model": model})
    vocabulary = model.encode_vocabulary(VOCABULARY)
    expected = torch.stack([original[name].reshape(-1).float() for name in vocabulary.candidate_names])
    assert torch.equal(vocabulary.text_query_embeddings, expected)
    assert torch.equal(vocabulary.name_embeddings, text_tower)
    card = (result.output_dir / "README.md").read_text()
    assert all(part.strip() in card for part in CATEGORY_BANK_SNIPPET.split("\n\n"))
    assert f"original ITA's fixed name embeddings ({len(BANK_NAMES)} names" in card

    torch.save({"cat": torch.zeros(1, 768).half()}, tmp_path / "wrong_size.pt")
    config = tiny_config()
    with pytest.raises(ValueError, match="embeddings of size 768"):
        convert_tiny(original_state_dict(config), config, tmp_path, category_bank=tmp_path / "wrong_size.pt")
    fcclip = tiny_variant_config("fcclip")
    with pytest.raises(ValueError, match="this checkpoint is FC-CLIP"):
        convert_tiny(original_state_dict(fcclip), fcclip, tmp_path, category_bank=tmp_path / "wrong_size.pt")
    assert "## Category bank" not in (converted["fcclip"][0].output_dir / "README.md").read_text()


# --------------------------------------------------------------------------------------------- remote code
def test_exported_source_imports_only_relatively(tmp_path):
    written = export_remote_code(tmp_path)
    assert {
        "configuration_ita.py",
        "modeling_ita.py",
        "image_processing_ita.py",
        "processing_ita.py",
        "layers.py",
    } <= set(written)
    for name in written:
        assert not {"configuration_ita", "image_processing_ita", "modeling_ita"} & set(get_imports(tmp_path / name))
    # The package's `from configuration_ita import ITAConfig` became a relative import.
    modeling = (tmp_path / "modeling_ita.py").read_text()
    assert "from configuration_ita import" not in modeling
    assert modeling.count("from .configuration_ita import ITAConfig") == 1
    assert "from modeling_ita" not in (tmp_path / "processing_ita.py").read_text()


def test_flat_source_rewrites_project_imports_only():
    source = (
        "import torch\n"
        "from configuration_ita import ITAConfig\n"
        "from .modeling import ITAForOpenVocabSegmentation\n"
        "def f():\n"
        "    from modeling_ita.vocabulary import parse_vocabulary\n"
        "from transformers import PreTrainedModel\n"
    )
    assert flat_source(source, in_package=True) == (
        "import torch\n"
        "from .configuration_ita import ITAConfig\n"
        "from .modeling_ita import ITAForOpenVocabSegmentation\n"
        "def f():\n"
        "    from .vocabulary import parse_vocabulary\n"
        "from transformers import PreTrainedModel\n"
    )
    for bad in ("from ..training import main\n", "import modeling_ita\n", "from modeling_ita import ITAConfig\n"):
        with pytest.raises(ValueError):
            flat_source(bad, in_package=True)


def test_exported_files_are_the_figure_and_never_a_wing():
    sources = {Path(path).parent.name for path in REMOTE_CODE_FILES.values()}
    assert sources <= {"", "modeling_ita"}  # root modules and the figure modules directly in the package
    for path in REMOTE_CODE_FILES.values():
        assert (ROOT / path).is_file(), path


REMOTE_LOAD = WITHOUT_THE_PACKAGE + textwrap.dedent(
    """

    import torch
    from transformers import AutoModel, AutoProcessor

    reference_file, output_file, *folders = sys.argv[1:]
    reference = torch.load(reference_file, weights_only=False)
    outputs = {}
    for folder in folders:
        model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
        assert type(processor).__module__.startswith("transformers_modules."), type(processor).__module__
        inputs = processor(images=reference["image"], text=reference["vocabulary"], return_tensors="pt")
        with torch.no_grad():
            out = model(**inputs)
        result = {
            "pixel_values": inputs["pixel_values"],
            "class_queries_logits": out.class_queries_logits,
            "masks_queries_logits": out.masks_queries_logits,
        }
        bank_file = folder + "/category_bank.safetensors"
        try:
            open(bank_file).close()
        except FileNotFoundError:
            pass
        else:
            exec(reference["snippet"], {"bank_file": bank_file, "model": model})
            result["text_query_embeddings"] = model.encode_vocabulary(reference["vocabulary"]).text_query_embeddings
        outputs[folder] = result
    torch.save(outputs, output_file)
    leaked = sorted(name for name in sys.modules if name.split(".")[0] in BLOCKED)
    assert not leaked, leaked
    print("remote code OK")
    """
)


def test_remote_code_loads_without_the_package_and_matches_it(converted, tmp_path):
    image = np.random.default_rng(0).integers(0, 256, size=(48, 72, 3), dtype=np.uint8)
    torch.save({"image": image, "vocabulary": VOCABULARY, "snippet": CATEGORY_BANK_SNIPPET}, tmp_path / "reference.pt")
    folders = [str(converted[variant][0].output_dir) for variant in ("ita", "fcclip")]
    # Same thread count as this process: the masked-attention thresholds of a random tiny model can flip on
    # float reordering between thread counts, which would not be a remote-code difference.
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_MODULES_CACHE=str(tmp_path / "modules"),
        OMP_NUM_THREADS=str(torch.get_num_threads()),
    )
    env.pop("PYTHONPATH", None)
    completed = subprocess.run(
        [sys.executable, "-c", REMOTE_LOAD, str(tmp_path / "reference.pt"), str(tmp_path / "remote.pt"), *folders],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert "remote code OK" in completed.stdout
    remote = torch.load(tmp_path / "remote.pt", weights_only=False)

    for folder in folders:
        model = ITAForOpenVocabSegmentation.from_pretrained(folder).eval()
        processor = ITAProcessor(image_processor=ITAImageProcessor.for_model_config(model.config))
        inputs = processor(images=image, text=VOCABULARY, return_tensors="pt")
        with torch.no_grad():
            out = model(**inputs)
        torch.testing.assert_close(remote[folder]["pixel_values"], inputs["pixel_values"], rtol=0, atol=0)
        torch.testing.assert_close(
            remote[folder]["class_queries_logits"], out.class_queries_logits, rtol=1e-5, atol=1e-6
        )
        torch.testing.assert_close(
            remote[folder]["masks_queries_logits"], out.masks_queries_logits, rtol=1e-5, atol=1e-6
        )
    bank = load_category_bank(Path(folders[0]) / CATEGORY_BANK_FILE)
    candidates = ITAForOpenVocabSegmentation.from_pretrained(folders[0]).encode_vocabulary(VOCABULARY).candidate_names
    expected = torch.stack([bank[name].float() for name in candidates])
    assert torch.equal(remote[folders[0]]["text_query_embeddings"], expected)
    assert "text_query_embeddings" not in remote[folders[1]]


# ---------------------------------------------------------------------------------------------- command line
def load_script():
    spec = importlib.util.spec_from_file_location(
        "convert_checkpoint_script", ROOT / "scripts" / "convert_checkpoint.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_push_to_hub_fails_cleanly_offline(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    config = tiny_config()
    torch.save({"model": original_state_dict(config)}, tmp_path / "ita.pth")
    script = load_script()
    start = time.monotonic()
    code = script.main(
        [
            "--checkpoint",
            str(tmp_path / "ita.pth"),
            "--output",
            str(tmp_path / "out"),
            "--clip-config",
            json.dumps(TINY_CLIP_CONFIG),
            "--config-overrides",
            json.dumps(tiny_overrides(config)),
            "--push-to-hub",
            "someone/ita-tiny",
        ]
    )
    captured = capsys.readouterr()
    assert code == 1  # a data error (HubPushError): the folder is written, the upload failed
    assert "Wrote ita" in captured.out
    assert "offline mode" in captured.err and "hf upload someone/ita-tiny" in captured.err
    assert str(tmp_path / "out") in captured.err
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert time.monotonic() - start < 60

    # A failed connection (no offline flag) fails as cleanly, at once.
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    start = time.monotonic()
    with pytest.raises(HubPushError, match="push it later with `hf upload someone/ita-tiny"):
        push_folder_to_hub(tmp_path / "out", "someone/ita-tiny", endpoint="http://127.0.0.1:9", token="hf_test")
    assert time.monotonic() - start < 10


def test_command_line_reports_conversion_errors(tmp_path, capsys):
    config = tiny_config()
    state_dict = original_state_dict(config)
    del state_dict["void_embedding.weight"]
    torch.save({"model": state_dict}, tmp_path / "broken.pth")
    (tmp_path / "clip.json").write_text(json.dumps(TINY_CLIP_CONFIG))
    code = load_script().main(
        [
            "--checkpoint",
            str(tmp_path / "broken.pth"),
            "--output",
            str(tmp_path / "out"),
            "--clip-config",
            str(tmp_path / "clip.json"),
            "--config-overrides",
            json.dumps(tiny_overrides(config)),
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "ita-convert: error: The checkpoint does not fit the model" in err
    assert "model key void_embedding.weight [1, 32] is not filled" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------- original configs
def test_original_yaml_config_fills_what_shapes_cannot_tell(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "MODEL:\n  MASK_FORMER:\n    NHEADS: 2\n    DEC_LAYERS: 4\n    DIM_FEEDFORWARD: 64\n"
        "  FC_CLIP:\n    GEOMETRIC_ENSEMBLE_ALPHA: 0.3\n"
    )
    (tmp_path / "eval.yaml").write_text("_BASE_: base.yaml\nMODEL:\n  FC_CLIP:\n    GEOMETRIC_ENSEMBLE_BETA: 0.7\n")
    values = read_original_config(tmp_path / "eval.yaml")
    assert values == {
        "decoder_attention_heads": 2,
        "pixel_decoder_attention_heads": 2,
        "decoder_ffn_dim": 64,
        "ensemble_alpha": 0.3,
        "ensemble_beta": 0.7,
        "decoder_layers": 3,
    }
    config = tiny_config()  # 4 heads x 3 levels x 2 points = 24 attention weights
    state_dict = original_state_dict(config)
    overrides = {key: value for key, value in tiny_overrides(config).items() if "heads" not in key}
    # 2 heads from the YAML: the 24 weights then split into 4 points, and the decoder takes 2 heads too.
    inferred, _, provenance = infer_config(
        state_dict, clip_config=TINY_CLIP_CONFIG, original_config=values, **overrides
    )
    assert (inferred.pixel_decoder_attention_heads, inferred.pixel_decoder_num_points) == (2, 4)
    assert inferred.decoder_attention_heads == 2 and inferred.ensemble_beta == 0.7
    assert provenance["ensemble_beta"] == "original config" and provenance["hidden_dim"] == "tensor shapes"
    # Without it, the original's fixed 4 points decide: 24 / (3 x 4) = 2 heads for both decoders.
    inferred, _, provenance = infer_config(state_dict, clip_config=TINY_CLIP_CONFIG, **overrides)
    assert (inferred.pixel_decoder_attention_heads, inferred.pixel_decoder_num_points) == (2, 4)
    assert "fixed 4 sampling points" in provenance["pixel_decoder_num_points"]
    # A YAML that contradicts the shapes (5 decoder layers here, the checkpoint has 3) is refused.
    with pytest.raises(CheckpointConversionError, match="does not describe this checkpoint") as error:
        infer_config(
            state_dict, clip_config=TINY_CLIP_CONFIG, original_config={**values, "decoder_layers": 5}, **overrides
        )
    assert any("decoder_layers" in problem for problem in error.value.problems)
    (tmp_path / "broken.yaml").write_text("_BASE_: missing.yaml\n")
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        read_original_config(tmp_path / "broken.yaml")


# ------------------------------------------------------------------------------------ a stranger's mistakes
def test_an_existing_folder_is_never_overwritten_silently(tmp_path, capsys):
    config = tiny_config()
    torch.save({"model": original_state_dict(config)}, tmp_path / "ita.pth")
    output = tmp_path / "out"
    output.mkdir()
    (output / "README.md").write_text("my notes")
    (output / "config.json").write_text("{}")
    argv = [
        "--checkpoint",
        str(tmp_path / "ita.pth"),
        "--output",
        str(output),
        "--clip-config",
        json.dumps(TINY_CLIP_CONFIG),
        "--config-overrides",
        json.dumps(tiny_overrides(config)),
        "--no-verify",
    ]
    assert load_script().main(argv) == 2  # a usage error, found before reading the checkpoint
    err = capsys.readouterr().err
    assert f"output folder {output} is not empty (README.md, config.json)" in err and "--overwrite" in err
    assert (output / "README.md").read_text() == "my notes" and (output / "config.json").read_text() == "{}"
    assert sorted(path.name for path in output.iterdir()) == ["README.md", "config.json"]

    assert load_script().main(argv + ["--overwrite"]) == 0
    err = capsys.readouterr().err
    # What takes time is announced as it starts.
    for step in ("Reading", "Inferring the configuration", "Writing ita"):
        assert step in err
    assert "Verifying" not in err  # --no-verify
    assert json.loads((output / "config.json").read_text())["model_type"] == "ita"
    assert (output / "model.safetensors").is_file()


def test_unreadable_checkpoints_name_the_real_problem(tmp_path, capsys):
    import argparse

    # An object a weights-only load refuses to build, as detectron2 checkpoints can hold.
    torch.save({"model": {"weight": torch.ones(2)}, "args": argparse.Namespace(lr=0.1)}, tmp_path / "objects.pth")
    torch.save({"model": {"weight": torch.ones(5000)}}, tmp_path / "whole.pth")
    whole = (tmp_path / "whole.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "random.pth").write_bytes(np.random.default_rng(0).bytes(4096))
    cases = {
        "missing.pth": (FileNotFoundError, "does not exist"),
        "random.pth": (ValueError, "is not a PyTorch checkpoint"),
        "truncated.pth": (ValueError, "truncated or damaged"),
        "objects.pth": (ValueError, "holds Python objects besides tensors (e.g. "),
    }
    for name, (error_type, message) in cases.items():
        with pytest.raises(error_type) as error:
            load_original_state_dict(tmp_path / name)
        assert message in str(error.value) and str(tmp_path / name) in str(error.value)
        assert "weights_only=False" not in str(error.value) and "resave" not in str(error.value)
    assert "argparse.Namespace" in str(
        pytest.raises(ValueError, load_original_state_dict, tmp_path / "objects.pth").value
    )

    # The command line says the same, before importing torch for a missing file.
    assert load_script().main(["--checkpoint", str(tmp_path / "random.pth"), "--output", str(tmp_path / "o")]) == 1
    assert "is not a PyTorch checkpoint" in capsys.readouterr().err
    assert load_script().main(["--checkpoint", str(tmp_path / "missing.pth"), "--output", str(tmp_path / "o")]) == 2
    assert "missing.pth: no such file" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------ stored vocabularies
def test_convert_stores_vocabularies_that_the_folder_then_uses(tmp_path, capsys, monkeypatch):
    config = tiny_config()
    torch.save({"model": original_state_dict(config)}, tmp_path / "ita.pth")
    (tmp_path / "kitchen.txt").write_text("cup,mug\nplate\ntable\n")
    argv = [
        "--checkpoint",
        str(tmp_path / "ita.pth"),
        "--output",
        str(tmp_path / "out"),
        "--clip-config",
        json.dumps(TINY_CLIP_CONFIG),
        "--config-overrides",
        json.dumps(tiny_overrides(config)),
        "--store-vocabularies",
        "pascal-voc-20",
        str(tmp_path / "kitchen.txt"),
    ]
    assert load_script().main(argv) == 0
    out = capsys.readouterr().out
    assert "Stored the encoded vocabulary PAS-20 as vocabularies/" in out
    assert "Stored the encoded vocabulary kitchen.txt as vocabularies/" in out
    assert len(list((tmp_path / "out" / "vocabularies").glob("*.safetensors"))) == 2

    from ita_segmentation.evaluation.benchmarks import BENCHMARKS

    monkeypatch.setenv("ITA_VOCABULARY_CACHE", "off")
    model = ITAForOpenVocabSegmentation.from_pretrained(tmp_path / "out")
    calls = []
    original = model.backbone.encode_text
    monkeypatch.setattr(model.backbone, "encode_text", lambda *a, **k: calls.append(1) or original(*a, **k))
    model.encode_vocabulary(BENCHMARKS["pas20"].class_names)  # as ita-evaluate gives it
    model.encode_vocabulary(["cup,mug", "plate", "table"])  # as ita-segment --labels-file gives it
    assert calls == []
    model.encode_vocabulary(["cup", "plate"])
    assert calls != []


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_called_that(tmp_path):
    import pickle

    marker = tmp_path / "ran"
    torch.save({"model": RunsCode(marker)}, tmp_path / "archive.pth")
    with open(tmp_path / "protocol4.pth", "wb") as handle:
        pickle.dump({"model": RunsCode(marker)}, handle, protocol=4)
    with pytest.raises(CheckpointConversionError, match="is a pickle that would run code when loaded .*system"):
        load_original_state_dict(tmp_path / "archive.pth")
    # Protocol 4 fails earlier in the weights-only unpickler, on an instruction it refuses.
    with pytest.raises(CheckpointConversionError, match="refuses .*it could run code when loaded") as error:
        load_original_state_dict(tmp_path / "protocol4.pth")
    assert "damaged" not in str(error.value)
    assert not marker.exists()
    assert isinstance(error.value, ValueError) and error.value.exit_status == 1
