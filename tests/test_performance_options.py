"""Speed-ups: the length-grouped text batches and the deformable-attention layout keep the numbers; the
`dominant_category_features="dense_features"` option ranks with the main forward's CLIP features."""

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config

from configuration_ita import ITAConfig
from modeling_ita import ITAForOpenVocabSegmentation
from modeling_ita.clip_backbone import ITACLIPBackbone
from modeling_ita.dominant_categories import dense_image_embeddings
from modeling_ita.kernels import multi_scale_deformable_attention
from modeling_ita.vocabulary import ITAVocabularyEncoder

VOCABULARY = ["cat,kitty", "sofa,couch", "wall", "sky", "tiger"]


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return ITACLIPBackbone(tiny_config())


# ----------------------------------------------------------------------------------- vocabulary encoding
def test_length_grouped_batches_keep_each_prompt_in_its_row(backbone):
    # Lengths interleaved so that grouping by length reorders prompts across batches of 2.
    texts = [
        "x",
        "There is a very large and old brick wall in the scene.",
        "a cat",
        "a photo of a medium sofa.",
        "y",
        "This is a photo of a large tiger standing in tall grass.",
    ]
    encoder = ITAVocabularyEncoder(["{}"], ["cat"], batch_size=2)
    grouped = encoder._encode_texts(backbone, texts)
    one_by_one = torch.cat([backbone.encode_text(backbone.tokenize([text])) for text in texts])
    full_context = backbone.encode_text(backbone.tokenize(texts), truncate_context=False)
    assert grouped.shape == (len(texts), backbone.embed_dim)
    torch.testing.assert_close(grouped, one_by_one, atol=1e-5, rtol=0)
    torch.testing.assert_close(grouped, full_context, atol=1e-5, rtol=0)


def test_length_grouped_batches_stay_within_the_batch_size(backbone, monkeypatch):
    encoder = ITAVocabularyEncoder(["{}", "a photo of a {} in the scene"], ["cat"], batch_size=3)
    lengths, sizes = [], []
    original = backbone.encode_text

    def spy(tokens, **kwargs):
        sizes.append(len(tokens))
        lengths.append(tokens.argmax(dim=-1).tolist())
        return original(tokens, **kwargs)

    monkeypatch.setattr(backbone, "encode_text", spy)
    encoder.encode(backbone, ["cat", "a very long class name with many words", "dog", "sky blue"])
    assert max(sizes) <= 3 and sum(sizes) == 8
    flat = [length for batch in lengths for length in batch]
    assert flat == sorted(flat)  # batches are formed from prompts in order of length


def test_empty_text_list_encodes_to_an_empty_matrix(backbone):
    encoder = ITAVocabularyEncoder(["{}"], ["cat"])
    assert encoder._encode_texts(backbone, []).shape == (0, backbone.embed_dim)


# ---------------------------------------------------------------------------------- deformable attention
def test_deformable_attention_gradients_match_finite_differences():
    torch.manual_seed(0)
    shapes = [(3, 4), (2, 3)]
    value = torch.randn(2, sum(h * w for h, w in shapes), 2, 3, dtype=torch.float64, requires_grad=True)
    # Random points (some outside the maps) almost surely miss the kinks of bilinear sampling at pixel centres.
    locations = (torch.rand(2, 5, 2, len(shapes), 2, 2, dtype=torch.float64) * 1.2 - 0.1).requires_grad_()
    weights = torch.rand(2, 5, 2, len(shapes), 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda v, loc, w: multi_scale_deformable_attention(v, shapes, loc, w), (value, locations, weights), atol=1e-6
    )


def test_deformable_attention_is_batch_invariant():
    torch.manual_seed(0)
    shapes = [(4, 6), (2, 3), (1, 2)]
    value = torch.randn(3, sum(h * w for h, w in shapes), 4, 8)
    locations = torch.rand(3, 7, 4, 3, 2, 2) * 1.4 - 0.2
    weights = torch.rand(3, 7, 4, 3, 2)
    batched = multi_scale_deformable_attention(value, shapes, locations, weights)
    for i in range(3):
        single = multi_scale_deformable_attention(value[i : i + 1], shapes, locations[i : i + 1], weights[i : i + 1])
        torch.testing.assert_close(batched[i : i + 1], single, atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------------- dominant categories from dense features
def test_dominant_category_features_is_validated_and_defaults_to_the_original():
    assert ITAConfig().dominant_category_features == "clip_image"
    assert tiny_config(dominant_category_features="dense_features").dominant_category_features == "dense_features"
    with pytest.raises(ValueError, match="dominant_category_features"):
        tiny_config(dominant_category_features="pooled")


def test_dense_features_of_an_unpadded_image_give_clip_own_image_embedding(backbone):
    # Mask-free pooling over the whole map is what CLIP's image encoder does: same embedding.
    pixel_values = torch.randn(2, 3, 64, 96)
    dense = backbone.extract_features(pixel_values).clip_vis_dense
    sizes = torch.tensor([[64, 96], [64, 96]])
    embeddings = dense_image_embeddings(backbone, dense, sizes, (64, 96))
    torch.testing.assert_close(embeddings, backbone.encode_image(pixel_values, normalize=False), atol=1e-5, rtol=1e-5)


def test_dense_features_are_averaged_over_the_cells_covering_each_image(backbone):
    dense = torch.randn(2, backbone.feature_channels[-1], 4, 6)  # a 128x192 padded batch at stride 32
    sizes = torch.tensor([[128, 192], [70, 33]])  # the second image covers 3 x 2 cells (rounded up)
    embeddings = dense_image_embeddings(backbone, dense, sizes, (128, 192))
    expected = torch.stack([dense[0].mean(dim=(-2, -1)), dense[1, :, :3, :2].mean(dim=(-2, -1))])
    torch.testing.assert_close(embeddings, backbone.pooled_embeddings(expected[:, None])[:, 0])


def test_dense_feature_ranking_reuses_the_main_forward_and_runs_no_second_clip_forward(monkeypatch):
    torch.manual_seed(0)
    model = ITAForOpenVocabSegmentation(tiny_config(dominant_category_features="dense_features")).eval()
    visual_calls = []
    original = model.backbone.encode_image
    monkeypatch.setattr(model.backbone, "encode_image", lambda *a, **k: visual_calls.append(1) or original(*a, **k))
    pixel_values = torch.randn(2, 3, 64, 96)
    image_sizes = torch.tensor([[64, 96], [40, 64]])
    with torch.no_grad():
        vocabulary = model.encode_vocabulary(VOCABULARY)
        outputs = model(pixel_values, image_sizes=image_sizes, vocabulary=vocabulary)
        dense = model.backbone.extract_features(pixel_values).clip_vis_dense
        image_embeddings = F.normalize(dense_image_embeddings(model.backbone, dense, image_sizes, (64, 96)), dim=-1)
    assert not visual_calls
    probs = (model.backbone.logit_scale.exp() * image_embeddings @ vocabulary.name_embeddings.t()).softmax(-1)
    expected = probs.sort(dim=-1, descending=True, stable=True).indices[:, : model.config.num_dominant_categories]
    assert outputs.dominant_category_ids.tolist() == expected.tolist()
    # Called without the dense features (e.g. to precompute a dataset column), rank computes them itself.
    with torch.no_grad():
        ids = model.dominant_categories.rank(model.backbone, pixel_values, image_sizes, vocabulary.name_embeddings)
    assert ids.tolist() == expected.tolist()


def test_default_ranking_still_runs_the_clip_image_forward(monkeypatch):
    torch.manual_seed(0)
    model = ITAForOpenVocabSegmentation(tiny_config()).eval()
    visual_calls = []
    original = model.backbone.encode_image
    monkeypatch.setattr(model.backbone, "encode_image", lambda *a, **k: visual_calls.append(1) or original(*a, **k))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64), class_names=VOCABULARY)
    assert len(visual_calls) == 1


def test_dense_feature_option_survives_save_and_reload(tmp_path):
    config = tiny_config(dominant_category_features="dense_features")
    config.save_pretrained(tmp_path)
    assert ITAConfig.from_pretrained(tmp_path).dominant_category_features == "dense_features"
