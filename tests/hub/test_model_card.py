"""The converted folder's model card (ita_segmentation/hub/folder.py): its YAML front matter, read as the Hub does."""

from types import SimpleNamespace

import pytest
import yaml
from conftest import tiny_config
from huggingface_hub import ModelCard

from configuration_ita import CONVNEXT_LARGE_D_320_CLIP_CONFIG, ITAConfig
from ita_segmentation.evaluation.benchmark_names import PUBLISHED_FC_CLIP_MIOU
from ita_segmentation.hub.folder import BASE_MODEL, render_model_card
from modeling_ita.remote_code import CUSTOM_PIPELINES


def conversion(variant, config):
    return SimpleNamespace(
        config=config,
        variant=variant,
        source="model.pth",
        source_sha256="0" * 64,
        num_tensors=10,
        num_parameters=1000,
        dropped_keys=["criterion.empty_weight"],
        category_bank_size=None,
        verified=True,
        provenance={"num_queries": "tensor shapes"},
    )


def front_matter(card):
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


@pytest.mark.parametrize("variant", ["ita", "fcclip"])
def test_the_front_matter_names_the_pipeline_licence_base_model_and_data(variant):
    config = ITAConfig(
        clip_config=CONVNEXT_LARGE_D_320_CLIP_CONFIG, num_dominant_categories=20 if variant == "ita" else 0
    )
    card = render_model_card(conversion(variant, config), repo_id="user/model")
    metadata = front_matter(card)
    assert metadata["pipeline_tag"] == "zero-shot-image-segmentation" in CUSTOM_PIPELINES  # the pipeline it carries
    assert metadata["library_name"] == "transformers"
    assert metadata["license"] == "apache-2.0"
    assert metadata["base_model"] == BASE_MODEL == "laion/CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft-soup"
    assert metadata["datasets"] == ["coco"]
    assert variant in metadata["tags"] and "custom_code" in metadata["tags"]
    assert 'pipeline("zero-shot-image-segmentation", model="user/model", trust_remote_code=True)' in card
    # huggingface_hub reads the same front matter.
    data = ModelCard(card).data
    assert data.pipeline_tag == "zero-shot-image-segmentation" and data.license == "apache-2.0"
    assert data.base_model == BASE_MODEL


def test_fcclip_model_index_holds_the_authors_numbers_marked_as_theirs():
    config = ITAConfig.fcclip(clip_config=CONVNEXT_LARGE_D_320_CLIP_CONFIG)
    card = render_model_card(conversion("fcclip", config))
    (entry,) = front_matter(card)["model-index"]
    reported = {}
    for result in entry["results"]:
        (metric,) = result["metrics"]
        assert metric["type"] == "mean_iou" and metric["verified"] is False
        assert "reported by the original authors" in metric["name"]
        assert "FC-CLIP paper" in result["source"]["name"]
        reported[result["dataset"]["name"]] = metric["value"]
    assert sorted(reported.values()) == sorted(PUBLISHED_FC_CLIP_MIOU.values())
    assert ModelCard(card).data.eval_results  # huggingface_hub parses the model-index
    assert "A-150 34.1" in card


def test_no_model_index_or_base_model_where_they_would_not_hold():
    ita = render_model_card(conversion("ita", ITAConfig(clip_config=CONVNEXT_LARGE_D_320_CLIP_CONFIG)))
    assert "model-index" not in front_matter(ita)  # the ITA authors published no weights to report on
    custom_clip = render_model_card(conversion("fcclip", tiny_config(num_dominant_categories=0)))
    assert "base_model" not in front_matter(custom_clip) and "model-index" not in front_matter(custom_clip)
