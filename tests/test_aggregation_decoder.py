"""Tests of the image-text aggregation decoder (FC-CLIP's masked-attention decoder, ITA variant)."""

import re

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config
from torch import nn
from transformers import PreTrainedModel

from configuration_ita import ITAConfig
from modeling_ita import aggregation_decoder
from modeling_ita.aggregation_decoder import (
    ITAAggregationDecoder,
    ITAAggregationDecoderLayer,
    masked_attention_mask,
)
from modeling_ita.layers import classification_logits, mask_pool
from modeling_ita.vocabulary import ITAVocabulary

NUM_CLASSES = 3
SYNONYM_TO_CLASS = torch.tensor([0, 0, 1, 2, 2])
# The decoder reads `synonym_to_class` and `num_classes` from the vocabulary; its embeddings are not used here.
VOCABULARY = ITAVocabulary(
    class_names=("cat,kitty", "dog", "sofa,couch"),
    synonyms=("cat", "kitty", "dog", "sofa", "couch"),
    synonym_to_class=SYNONYM_TO_CLASS,
    text_classifier=torch.zeros(5, 1),
    overlap_mask=torch.zeros(NUM_CLASSES),
)


def tiny_fcclip_config(**overrides):
    """FC-CLIP at the size of `tiny_config` (6 learnable queries, self-attention, no text queries)."""
    return tiny_config(**{"num_dominant_categories": 0, "decoder_self_attention": True, **overrides})


def make_inputs(config, batch_size=2, height=64, width=96, seed=0):
    """Pixel-decoder-like inputs for an image of `height` x `width` (non-square to catch h/w swaps)."""
    generator = torch.Generator().manual_seed(seed)
    features = [
        torch.randn(batch_size, config.hidden_dim, height // stride, width // stride, generator=generator)
        for stride in (32, 16, 8)
    ]
    mask_features = torch.randn(batch_size, config.mask_dim, height // 4, width // 4, generator=generator)
    text_queries = None
    if config.num_dominant_categories:
        text_queries = torch.randn(batch_size, config.num_dominant_categories, config.hidden_dim, generator=generator)
    classifier = F.normalize(torch.randn(len(SYNONYM_TO_CLASS) + 1, config.clip_embed_dim, generator=generator), dim=-1)
    return features, mask_features, text_queries, classifier


def all_predictions(output):
    """`(class logits, mask logits)` of each prediction of a decoder output, first to last, read by field name."""
    predictions = [*(output.auxiliary_predictions or ()), output]
    return [(prediction.class_queries_logits, prediction.masks_queries_logits) for prediction in predictions]


def run(decoder, features, mask_features, text_queries, classifier):
    return all_predictions(decoder(features, mask_features, text_queries, classifier, VOCABULARY))


def build(config, seed=0):
    torch.manual_seed(seed)
    return ITAAggregationDecoder(config).eval()


@pytest.mark.parametrize("variant", ["ita", "fcclip"])
def test_output_count_and_shapes(variant):
    config = tiny_config() if variant == "ita" else tiny_fcclip_config()
    decoder = build(config)
    inputs = make_inputs(config)
    if variant == "fcclip":
        assert inputs[2] is None
    with torch.no_grad():
        predictions = run(decoder, *inputs)
    total_queries = config.num_dominant_categories + config.num_queries
    assert len(predictions) == config.decoder_layers + 1
    for class_logits, mask_logits in predictions:
        assert class_logits.shape == (2, total_queries, NUM_CLASSES + 1)
        assert mask_logits.shape == (2, total_queries, 64 // 4, 96 // 4)
        assert torch.isfinite(class_logits).all() and torch.isfinite(mask_logits).all()


def test_ita_has_no_self_attention_and_fcclip_has():
    ita_keys = build(tiny_config()).state_dict().keys()
    fcclip_keys = build(tiny_fcclip_config()).state_dict().keys()
    assert not any("self_attention" in key for key in ita_keys)
    assert sum("self_attention" in key for key in fcclip_keys) == 6 * 3  # 6 tensors per layer, 3 layers
    assert all(isinstance(layer, ITAAggregationDecoderLayer) for layer in build(tiny_config()).layers)


def test_text_queries_length_is_checked(config):
    decoder = build(config)
    features, mask_features, text_queries, classifier = make_inputs(config)
    with pytest.raises(ValueError, match="text_queries"):
        run(decoder, features, mask_features, None, classifier)
    with pytest.raises(ValueError, match="text_queries"):
        run(decoder, features, mask_features, text_queries[:, :-1], classifier)


def test_full_size_parameter_counts():
    # ITA: 12,526,849 = FC-CLIP's 14,930,689 - 9 self-attention layers (263,680 each)
    # - 70 query_feat rows - 50 query_embed rows (256 each); both equal the original predictors' counts.
    with torch.device("meta"):
        ita = ITAAggregationDecoder(ITAConfig())
        fcclip = ITAAggregationDecoder(ITAConfig.fcclip())
    assert sum(p.numel() for p in ita.parameters()) == 12_526_849
    assert sum(p.numel() for p in fcclip.parameters()) == 14_930_689


def test_text_queries_change_only_their_own_rows_in_ita(config):
    """Without self-attention the queries never see each other: new text queries change the text-query
    rows and leave the learnable-query rows untouched."""
    decoder = build(config)
    features, mask_features, text_queries, classifier = make_inputs(config)
    k = config.num_dominant_categories
    with torch.no_grad():
        before = run(decoder, features, mask_features, text_queries, classifier)
        # Random, not constant: the first prediction's LayerNorm would cancel a constant shift.
        after = run(decoder, features, mask_features, text_queries + torch.randn_like(text_queries), classifier)
    for (class_before, mask_before), (class_after, mask_after) in zip(before, after):
        assert not torch.allclose(class_before[:, :k], class_after[:, :k])
        assert not torch.allclose(mask_before[:, :k], mask_after[:, :k])
        torch.testing.assert_close(class_before[:, k:], class_after[:, k:], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mask_before[:, k:], mask_after[:, k:], atol=1e-5, rtol=1e-5)


def test_queries_interact_through_self_attention_in_fcclip():
    config = tiny_fcclip_config()
    decoder = build(config)
    features, mask_features, _, classifier = make_inputs(config)
    with torch.no_grad():
        before = run(decoder, features, mask_features, None, classifier)
        decoder.query_feat.weight[0] += 1.0
        after = run(decoder, features, mask_features, None, classifier)
    # Only query 0 changed, yet after the first layer the others move too.
    assert not torch.allclose(before[1][1][:, 1:], after[1][1][:, 1:])


def test_attention_mask_thresholds_at_sigmoid_one_half_and_unblocks_full_rows():
    mask_logits = torch.tensor(
        [
            [[[-1.0, 2.0], [0.5, -3.0]], [[-1.0, -2.0], [-0.5, -3.0]]],  # image 0: query 1 is negative everywhere
            [[[1.0, 1.0], [1.0, 1.0]], [[4.0, -4.0], [-4.0, 4.0]]],  # image 1
        ]
    )  # [B=2, Q=2, 2, 2]
    blocked = masked_attention_mask(mask_logits, (2, 2))
    assert blocked.dtype == torch.bool and blocked.shape == (2, 1, 2, 4)
    expected = torch.tensor(
        [
            [[True, False, False, True], [False, False, False, False]],  # the all-negative row is unblocked
            [[False, False, False, False], [False, True, True, False]],
        ]
    )
    # One mask per image, broadcast over the heads.
    torch.testing.assert_close(blocked, expected[:, None])


def test_attention_mask_is_resized_bilinearly_and_detached():
    mask_logits = torch.randn(1, 3, 8, 12, requires_grad=True)
    blocked = masked_attention_mask(mask_logits, (4, 6))
    resized = F.interpolate(mask_logits.detach(), size=(4, 6), mode="bilinear", align_corners=False)
    assert not blocked.requires_grad
    torch.testing.assert_close(blocked[0, 0], resized[0].flatten(1) < 0)


def test_a_query_with_an_all_negative_mask_attends_everywhere(config, monkeypatch):
    decoder = build(config)
    features, mask_features, text_queries, classifier = make_inputs(config)
    mask_features = mask_features.abs() + 0.1
    with torch.no_grad():
        # Every mask embedding becomes -1 per channel: against positive mask features every mask logit is
        # negative, so every row of every attention mask is fully blocked and must be unblocked.
        last = decoder.mask_embed.layers[-1]
        last.weight.zero_()
        last.bias.fill_(-1.0)
        masked = run(decoder, features, mask_features, text_queries, classifier)
        monkeypatch.setattr(aggregation_decoder, "masked_attention_mask", lambda *args: None)
        unmasked = run(decoder, features, mask_features, text_queries, classifier)
    assert (masked[0][1] < 0).all()
    for (class_masked, _), (class_unmasked, _) in zip(masked, unmasked):
        torch.testing.assert_close(class_masked, class_unmasked, atol=1e-5, rtol=1e-5)


def test_attention_mask_changes_the_result(config, monkeypatch):
    # Guards the test above: with ordinary (mixed-sign) masks, masking does matter.
    decoder = build(config)
    inputs = make_inputs(config)
    with torch.no_grad():
        masked = run(decoder, *inputs)
        monkeypatch.setattr(aggregation_decoder, "masked_attention_mask", lambda *args: None)
        unmasked = run(decoder, *inputs)
    assert not torch.allclose(masked[-1][0], unmasked[-1][0], atol=1e-4)


@pytest.mark.parametrize("variant", ["ita", "fcclip"])
def test_batched_equals_one_image_at_a_time(variant):
    config = tiny_config() if variant == "ita" else tiny_fcclip_config()
    decoder = build(config)
    features, mask_features, text_queries, classifier = make_inputs(config)
    with torch.no_grad():
        batched = run(decoder, features, mask_features, text_queries, classifier)
        for b in range(2):
            alone = run(
                decoder,
                [level[b : b + 1] for level in features],
                mask_features[b : b + 1],
                None if text_queries is None else text_queries[b : b + 1],
                classifier,
            )
            for (class_batched, mask_batched), (class_alone, mask_alone) in zip(batched, alone):
                torch.testing.assert_close(class_batched[b : b + 1], class_alone, atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(mask_batched[b : b + 1], mask_alone, atol=1e-5, rtol=1e-5)


def reference_sequence_first(decoder, features, mask_features, text_queries, classifier):
    """The original's computation, written independently: [Q, B, C] tensors, seq-first attention that
    returns weights, the mask repeated per head and full rows unblocked just before each layer."""
    config = decoder.config
    heads = config.decoder_attention_heads

    def seq_first_attention(batch_first_attention):
        attention = nn.MultiheadAttention(config.hidden_dim, heads)
        attention.load_state_dict(batch_first_attention.state_dict())
        return attention.eval()

    batch = mask_features.shape[0]
    memories, positions, sizes = [], [], []
    for level, x in enumerate(features):
        sizes.append(x.shape[-2:])
        positions.append(decoder.position_embedding(x).flatten(2).permute(2, 0, 1))
        memories.append((x.flatten(2) + decoder.level_embed.weight[level][None, :, None]).permute(2, 0, 1))
    query_pos = decoder.query_embed.weight.unsqueeze(1).repeat(1, batch, 1)
    output = decoder.query_feat.weight.unsqueeze(1).repeat(1, batch, 1)
    if text_queries is not None:
        output = torch.cat([text_queries.transpose(0, 1), output], dim=0)

    def head(output, size):
        normed = decoder.decoder_norm(output).transpose(0, 1)
        masks = torch.einsum("bqc,bchw->bqhw", decoder.mask_embed(normed), mask_features)
        pooled = decoder.mask_pooling_proj(mask_pool(mask_features, masks))
        scale = torch.clamp(decoder.logit_scale.exp(), max=100)
        embeddings = decoder.class_embed(pooled + normed)
        logits = classification_logits(embeddings, classifier, scale, SYNONYM_TO_CLASS, NUM_CLASSES)
        attn_mask = F.interpolate(masks, size=size, mode="bilinear", align_corners=False)
        attn_mask = attn_mask.sigmoid().flatten(2).unsqueeze(1).repeat(1, heads, 1, 1).flatten(0, 1) < 0.5
        return logits, masks, attn_mask

    logits, masks, attn_mask = head(output, sizes[0])
    predictions = [(logits, masks)]
    for i, layer in enumerate(decoder.layers):
        level = i % 3
        attn_mask[torch.where(attn_mask.sum(-1) == attn_mask.shape[-1])] = False
        cross = layer.cross_attention
        attended = seq_first_attention(cross.attention)(
            output + query_pos, memories[level] + positions[level], memories[level], attn_mask=attn_mask
        )[0]
        output = cross.norm(output + attended)
        if layer.self_attention is not None:
            self_attn = layer.self_attention
            q = output + query_pos
            output = self_attn.norm(output + seq_first_attention(self_attn.attention)(q, q, output)[0])
        ffn = layer.ffn
        output = ffn.norm(output + ffn.linear2(F.relu(ffn.linear1(output))))
        logits, masks, attn_mask = head(output, sizes[(i + 1) % 3])
        predictions.append((logits, masks))
    return predictions


@pytest.mark.parametrize("variant", ["ita", "fcclip"])
def test_matches_sequence_first_reference(variant):
    config = tiny_config() if variant == "ita" else tiny_fcclip_config()
    decoder = build(config)
    inputs = make_inputs(config)
    with torch.no_grad():
        ours = run(decoder, *inputs)
        reference = reference_sequence_first(decoder, *inputs)
        # Some, not all, attention is blocked, so the comparison covers the masking.
        blocked = masked_attention_mask(ours[0][1], inputs[0][0].shape[-2:])
        assert 0.0 < blocked.float().mean() < 1.0
    for (class_ours, mask_ours), (class_ref, mask_ref) in zip(ours, reference, strict=True):
        torch.testing.assert_close(class_ours, class_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mask_ours, mask_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", ["ita", "fcclip"])
def test_last_prediction_alone_matches_the_full_run(variant, monkeypatch):
    """Without intermediate predictions the decoder builds the attention masks from logits computed on
    mask features resized to each level (same numbers up to rounding) and runs the class head once."""
    config = tiny_config() if variant == "ita" else tiny_fcclip_config()
    decoder = build(config)
    features, mask_features, text_queries, classifier = make_inputs(config)
    with torch.no_grad():
        full = run(decoder, features, mask_features, text_queries, classifier)
        heads = []
        predict = decoder.predict
        monkeypatch.setattr(decoder, "predict", lambda *args: heads.append(1) or predict(*args))
        output = decoder(
            features,
            mask_features,
            text_queries,
            classifier,
            VOCABULARY,
            output_intermediate_predictions=False,
        )
        last = all_predictions(output)
    assert output.auxiliary_predictions is None
    assert len(last) == 1 and len(heads) == 1
    torch.testing.assert_close(last[0][0], full[-1][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(last[0][1], full[-1][1], atol=1e-5, rtol=1e-5)


class _DecoderModel(PreTrainedModel):
    """Minimal PreTrainedModel around the decoder, to switch checkpointing on the transformers way."""

    config_class = ITAConfig
    supports_gradient_checkpointing = True

    def __init__(self, config):
        super().__init__(config)
        self.decoder = ITAAggregationDecoder(config)

    def _init_weights(self, module):
        pass


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients(config, use_reentrant):
    torch.manual_seed(0)
    model = _DecoderModel(config).train()
    features, mask_features, text_queries, classifier = make_inputs(config)
    text_queries.requires_grad_(True)

    def gradients():
        model.zero_grad()
        text_queries.grad = None
        predictions = run(model.decoder, features, mask_features, text_queries, classifier)
        loss = sum(logits.square().mean() + masks.sigmoid().mean() for logits, masks in predictions)
        loss.backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        return grads, text_queries.grad.clone()

    plain, plain_text = gradients()
    model.activation_checkpointing_enable({"use_reentrant": use_reentrant})
    calls = []
    for layer in model.decoder.layers:
        assert layer.gradient_checkpointing
        checkpoint_func = layer._gradient_checkpointing_func
        layer._gradient_checkpointing_func = lambda *a, _f=checkpoint_func, **k: calls.append(1) or _f(*a, **k)
    checkpointed, checkpointed_text = gradients()

    assert len(calls) == config.decoder_layers
    assert plain.keys() == checkpointed.keys()
    assert any(name.startswith("decoder.layers.0.") for name in plain)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)
    torch.testing.assert_close(checkpointed_text, plain_text, atol=1e-6, rtol=1e-5)


def test_autocast_and_half_precision_run(config):
    decoder = build(config)
    features, mask_features, text_queries, classifier = make_inputs(config)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        predictions = run(decoder, features, mask_features, text_queries, classifier)
    assert all(torch.isfinite(c).all() and torch.isfinite(m).all() for c, m in predictions)

    decoder = decoder.to(torch.bfloat16)
    with torch.no_grad():
        predictions = run(
            decoder,
            [level.bfloat16() for level in features],
            mask_features.bfloat16(),
            text_queries.bfloat16(),
            classifier.bfloat16(),
        )
    assert predictions[-1][0].dtype == torch.bfloat16 and predictions[-1][1].dtype == torch.bfloat16


def test_init_follows_the_original():
    decoder = build(tiny_config())
    cross = decoder.layers[0].cross_attention.attention
    assert torch.equal(cross.in_proj_bias, torch.zeros_like(cross.in_proj_bias))
    assert torch.equal(cross.out_proj.bias, torch.zeros_like(cross.out_proj.bias))
    # Xavier-uniform bound for a [out, in] matrix: sqrt(6 / (in + out)).
    linear1 = decoder.layers[0].ffn.linear1.weight
    bound = (6 / sum(linear1.shape)) ** 0.5
    assert linear1.abs().max() <= bound and linear1.abs().max() > 0.8 * bound
    assert decoder.logit_scale.item() == pytest.approx(tiny_config().logit_scale_init)
    with torch.no_grad():
        decoder.logit_scale.fill_(0.0)
        decoder.layers[0].ffn.linear1.weight.fill_(1.0)
    for module in decoder.modules():
        if hasattr(module, "_reset_parameters") and module is not cross:
            module._reset_parameters()
    assert decoder.logit_scale.item() == pytest.approx(tiny_config().logit_scale_init)
    assert linear1.abs().max() <= bound


# The original predictor's ITA keys (huanglab-research/ITA, ConvNeXt-L config) and their shapes; FC-CLIP
# (bytedance/fc-clip) adds the self-attention keys and has 250 query_feat / query_embed rows.
ORIGINAL_PREDICTOR_KEYS = {
    "logit_scale": (),
    "decoder_norm.weight": (256,),
    "decoder_norm.bias": (256,),
    "query_feat.weight": (180, 256),
    "query_embed.weight": (200, 256),
    "level_embed.weight": (3, 256),
    "mask_embed.layers.0.weight": (256, 256),
    "mask_embed.layers.0.bias": (256,),
    "mask_embed.layers.1.weight": (256, 256),
    "mask_embed.layers.1.bias": (256,),
    "mask_embed.layers.2.weight": (256, 256),
    "mask_embed.layers.2.bias": (256,),
    "_mask_pooling_proj.0.weight": (256,),
    "_mask_pooling_proj.0.bias": (256,),
    "_mask_pooling_proj.1.weight": (256, 256),
    "_mask_pooling_proj.1.bias": (256,),
    "class_embed.layers.0.weight": (256, 256),
    "class_embed.layers.0.bias": (256,),
    "class_embed.layers.1.weight": (256, 256),
    "class_embed.layers.1.bias": (256,),
    "class_embed.layers.2.weight": (768, 256),
    "class_embed.layers.2.bias": (768,),
}
ORIGINAL_PER_LAYER_KEYS = {
    "transformer_cross_attention_layers.{i}.multihead_attn.in_proj_weight": (768, 256),
    "transformer_cross_attention_layers.{i}.multihead_attn.in_proj_bias": (768,),
    "transformer_cross_attention_layers.{i}.multihead_attn.out_proj.weight": (256, 256),
    "transformer_cross_attention_layers.{i}.multihead_attn.out_proj.bias": (256,),
    "transformer_cross_attention_layers.{i}.norm.weight": (256,),
    "transformer_cross_attention_layers.{i}.norm.bias": (256,),
    "transformer_ffn_layers.{i}.linear1.weight": (2048, 256),
    "transformer_ffn_layers.{i}.linear1.bias": (2048,),
    "transformer_ffn_layers.{i}.linear2.weight": (256, 2048),
    "transformer_ffn_layers.{i}.linear2.bias": (256,),
    "transformer_ffn_layers.{i}.norm.weight": (256,),
    "transformer_ffn_layers.{i}.norm.bias": (256,),
}
ORIGINAL_SELF_ATTENTION_KEYS = {
    "transformer_self_attention_layers.{i}.self_attn.in_proj_weight": (768, 256),
    "transformer_self_attention_layers.{i}.self_attn.in_proj_bias": (768,),
    "transformer_self_attention_layers.{i}.self_attn.out_proj.weight": (256, 256),
    "transformer_self_attention_layers.{i}.self_attn.out_proj.bias": (256,),
    "transformer_self_attention_layers.{i}.norm.weight": (256,),
    "transformer_self_attention_layers.{i}.norm.bias": (256,),
}
ORIGINAL_DECODER_LAYERS = 9

RENAMES = [
    (r"^sem_seg_head\.predictor\.", ""),
    (r"^transformer_cross_attention_layers\.(\d+)\.multihead_attn\.", r"layers.\1.cross_attention.attention."),
    (r"^transformer_cross_attention_layers\.(\d+)\.norm\.", r"layers.\1.cross_attention.norm."),
    (r"^transformer_self_attention_layers\.(\d+)\.self_attn\.", r"layers.\1.self_attention.attention."),
    (r"^transformer_self_attention_layers\.(\d+)\.norm\.", r"layers.\1.self_attention.norm."),
    (r"^transformer_ffn_layers\.(\d+)\.", r"layers.\1.ffn."),
    (r"^_mask_pooling_proj\.", "mask_pooling_proj."),
]


def original_keys(fcclip):
    keys = dict(ORIGINAL_PREDICTOR_KEYS)
    if fcclip:
        keys["query_feat.weight"] = keys["query_embed.weight"] = (250, 256)
    per_layer = {**ORIGINAL_PER_LAYER_KEYS, **(ORIGINAL_SELF_ATTENTION_KEYS if fcclip else {})}
    for i in range(ORIGINAL_DECODER_LAYERS):
        keys.update({template.format(i=i): shape for template, shape in per_layer.items()})
    return {f"sem_seg_head.predictor.{key}": shape for key, shape in keys.items()}


def rename(key):
    for pattern, replacement in RENAMES:
        key = re.sub(pattern, replacement, key)
    return key


@pytest.mark.parametrize("fcclip", [False, True])
def test_state_dict_maps_one_to_one_onto_the_original(fcclip):
    with torch.device("meta"):
        decoder = ITAAggregationDecoder(ITAConfig.fcclip() if fcclip else ITAConfig())
    ours = {key: tuple(value.shape) for key, value in decoder.state_dict().items()}
    original = original_keys(fcclip)
    assert len(original) == (184 if fcclip else 130)
    renamed = {rename(key): shape for key, shape in original.items()}
    assert len(renamed) == len(original)  # no two original keys collapse onto one
    assert renamed == ours


@pytest.mark.parametrize("variant", ["ita", "fcclip"])
def test_attention_weights_and_hidden_states_when_asked(variant):
    config = tiny_config() if variant == "ita" else tiny_fcclip_config()
    decoder = build(config)
    features, mask_features, text_queries, classifier = make_inputs(config)
    with torch.no_grad():
        plain = decoder(features, mask_features, text_queries, classifier, VOCABULARY)
        asked = decoder(
            features,
            mask_features,
            text_queries,
            classifier,
            VOCABULARY,
            output_hidden_states=True,
            output_attentions=True,
        )
    assert plain.hidden_states is None and plain.attentions is None
    total_queries = config.num_dominant_categories + config.num_queries
    assert len(asked.hidden_states) == config.decoder_layers + 1
    assert all(h.shape == (2, total_queries, config.hidden_dim) for h in asked.hidden_states)
    assert len(asked.attentions) == config.decoder_layers
    for i, weights in enumerate(asked.attentions):
        level = features[i % config.num_feature_levels]
        assert weights.shape == (2, config.decoder_attention_heads, total_queries, level.shape[-2] * level.shape[-1])
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))  # a softmax per query
        # The masked-attention rule: blocked positions get no weight.
        mask = masked_attention_mask(asked.auxiliary_predictions[i].masks_queries_logits, level.shape[-2:])[:, 0]
        assert (weights.masked_select(mask[:, None].expand_as(weights)) == 0).all()
    # Explicit attention weights give the same predictions as the fused kernel.
    for (a_logits, a_masks), (p_logits, p_masks) in zip(all_predictions(asked), all_predictions(plain), strict=True):
        torch.testing.assert_close(a_logits, p_logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(a_masks, p_masks, atol=1e-4, rtol=1e-4)
