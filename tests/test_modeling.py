import pytest
import torch
from transformers import AutoModel

from configuration_ita import ITAConfig
from modeling_ita import ITAForOpenVocabSegmentation, geometric_ensemble

VOCABULARY = ["cat,kitty", "sofa,couch", "wall", "sky", "tiger"]


def make_model(config):
    torch.manual_seed(0)
    return ITAForOpenVocabSegmentation(config).eval()


def synthetic_targets(batch, height, width, num_classes, generator=None):
    mask_labels, class_labels = [], []
    for _ in range(batch):
        label_map = torch.zeros(height, width, dtype=torch.long)
        label_map[: height // 2] = 1
        label_map[height // 2 :, : width // 3] = 2 % num_classes
        ids = label_map.unique()
        mask_labels.append(torch.stack([(label_map == i).float() for i in ids]))
        class_labels.append(ids)
    return mask_labels, class_labels


@pytest.mark.parametrize("variant", ["ita", "fcclip"])
def test_output_shapes(variant, config, fcclip_config):
    config = config if variant == "ita" else fcclip_config
    model = make_model(config)
    pixel_values = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = model(pixel_values, class_names=VOCABULARY, output_auxiliary_logits=True)
    queries = config.total_queries
    assert out.class_queries_logits.shape == (2, queries, len(VOCABULARY) + 1)
    assert out.ensemble_log_probs.shape == (2, queries, len(VOCABULARY) + 1)
    assert out.out_vocabulary_logits.shape == (2, queries, len(VOCABULARY) + 1)
    assert out.masks_queries_logits.shape == (2, queries, 16, 24)
    assert len(out.auxiliary_logits) == config.decoder_layers
    assert out.image_sizes.tolist() == [[64, 96], [64, 96]]
    # The ensemble gives log-probabilities; class_queries_logits stay the decoder's logits, in eval mode as in training.
    torch.testing.assert_close(out.ensemble_log_probs.exp().sum(-1), torch.ones(2, queries), atol=1e-5, rtol=0)
    model.train()
    trained = model(pixel_values, class_names=VOCABULARY)
    torch.testing.assert_close(trained.class_queries_logits, out.class_queries_logits, atol=1e-4, rtol=1e-4)
    assert trained.ensemble_log_probs is None and trained.out_vocabulary_logits is None
    model.eval()
    if variant == "ita":
        assert out.dominant_category_ids.shape == (2, config.num_dominant_categories)
        candidates = ["cat", "kitty", "sofa", "couch", "wall", "sky", "tiger", "other"]
        assert all(name in candidates for row in out.dominant_categories for name in row)
        assert len(set(out.dominant_categories[0])) == config.num_dominant_categories  # 8 candidates >= k=4
    else:
        assert out.dominant_category_ids is None and model.dominant_categories is None


@pytest.mark.parametrize("variant", ["ita", "fcclip"])
def test_final_prediction_does_not_depend_on_asking_for_auxiliary_logits(variant, config, fcclip_config):
    # Without auxiliary logits the decoder skips the intermediate class heads and builds its attention
    # masks at each level's resolution: the same final prediction up to float rounding.
    model = make_model(config if variant == "ita" else fcclip_config)
    pixel_values = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        plain = model(pixel_values, class_names=VOCABULARY)
        with_auxiliary = model(pixel_values, class_names=VOCABULARY, output_auxiliary_logits=True)
    assert plain.auxiliary_logits is None
    for name in ("class_queries_logits", "masks_queries_logits", "ensemble_log_probs", "out_vocabulary_logits"):
        torch.testing.assert_close(getattr(plain, name), getattr(with_auxiliary, name), atol=1e-5, rtol=1e-5)


def test_return_dict_false_gives_the_same_tensors(config):
    model = make_model(config)
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = model(pixel_values, class_names=VOCABULARY)
        tup = model(pixel_values, class_names=VOCABULARY, return_dict=False)
    tensors = [v for v in out.to_tuple()]
    assert len(tup) == len(tensors)
    for a, b in zip(tup, tensors):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)


def test_full_size_parameter_counts_match_the_original():
    # The original's counts: trainable ITA 18,514,369 / FC-CLIP 20,721,601; frozen CLIP 351,772,609.
    for config, trainable in ((ITAConfig(), 18_514_369), (ITAConfig.fcclip(), 20_721_601)):
        with torch.device("meta"):
            model = ITAForOpenVocabSegmentation(config)
        counts = {True: 0, False: 0}
        for p in model.parameters():
            counts[p.requires_grad] += p.numel()
        assert counts[True] == trainable
        assert counts[False] == sum(p.numel() for p in model.backbone.parameters()) == 351_772_609


def test_small_vocabulary_fills_the_dominant_slots_by_cycling(config):
    model = make_model(config)  # k = 4, candidates: "cat", "other"
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64), class_names=["cat"])
    names = out.dominant_categories[0]
    assert len(names) == 4 and set(names) == {"cat", "other"}
    assert names[0:2] == names[2:4]


def test_same_vocabulary_any_order_of_calls(config):
    model = make_model(config)
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a = model(pixel_values, class_names=["cat", "wall"]).class_queries_logits
        model(pixel_values, class_names=VOCABULARY)
        b = model(pixel_values, class_names=["cat", "wall"]).class_queries_logits
    assert a.shape[-1] == 3 and torch.equal(a, b)


def test_batch_equals_singles(config):
    model = make_model(config)
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        batched = model(images, class_names=VOCABULARY)
        singles = [model(images[i : i + 1], class_names=VOCABULARY) for i in range(2)]
    for i, single in enumerate(singles):
        torch.testing.assert_close(batched.ensemble_log_probs[i], single.ensemble_log_probs[0], atol=1e-4, rtol=0)
        torch.testing.assert_close(batched.class_queries_logits[i], single.class_queries_logits[0], atol=1e-4, rtol=0)
        torch.testing.assert_close(batched.masks_queries_logits[i], single.masks_queries_logits[0], atol=1e-4, rtol=0)
        assert torch.equal(batched.dominant_category_ids[i], single.dominant_category_ids[0])


def test_loss_gradients_reach_every_trainable_parameter_and_no_clip_parameter(config):
    model = make_model(config).train()
    pixel_values = torch.randn(2, 3, 64, 64)
    mask_labels, class_labels = synthetic_targets(2, 64, 64, len(VOCABULARY))
    out = model(pixel_values, class_names=VOCABULARY, mask_labels=mask_labels, class_labels=class_labels)
    assert torch.isfinite(out.loss)
    assert {"loss_ce", "loss_mask", "loss_dice"} <= set(out.loss_dict)
    assert out.out_vocabulary_logits is None  # training: in-vocabulary classifier only
    out.loss.backward()
    for name, param in model.named_parameters():
        if name.startswith("backbone."):
            assert not param.requires_grad and param.grad is None, name
        else:
            assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_training_cuts_the_loss_and_leaves_clip_unchanged(config):
    model = make_model(config).train()
    clip_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    pixel_values = torch.randn(2, 3, 32, 32)
    mask_labels, class_labels = synthetic_targets(2, 32, 32, len(VOCABULARY))
    ranking = model.eval()(pixel_values, class_names=VOCABULARY).dominant_category_ids
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(100):
        out = model(
            pixel_values,
            class_names=VOCABULARY,
            mask_labels=mask_labels,
            class_labels=class_labels,
            dominant_category_ids=ranking,
        )
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, clip_before[key]), key


def test_save_and_auto_model_reload_give_identical_outputs(config, tmp_path):
    model = make_model(config)
    with torch.no_grad():  # make every learnable tensor non-default so a lost weight shows
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded, ITAForOpenVocabSegmentation)
    assert all(not p.requires_grad for p in reloaded.backbone.parameters())
    # The causal mask is a non-persistent buffer refilled by from_pretrained: it must be rebuilt.
    assert torch.equal(reloaded.backbone.clip_model.attn_mask, model.backbone.clip_model.attn_mask)
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a = model(pixel_values, class_names=VOCABULARY)
        b = reloaded(pixel_values, class_names=VOCABULARY)
        tokens = model.backbone.tokenize(["a photo of a cat."])
        torch.testing.assert_close(
            model.backbone.clip_model.encode_text(tokens), reloaded.backbone.clip_model.encode_text(tokens)
        )
        torch.testing.assert_close(
            model.backbone.encode_image(pixel_values), reloaded.backbone.encode_image(pixel_values)
        )
    for field in ("class_queries_logits", "masks_queries_logits", "ensemble_log_probs", "out_vocabulary_logits"):
        torch.testing.assert_close(getattr(a, field), getattr(b, field), atol=0, rtol=0)
    assert torch.equal(a.dominant_category_ids, b.dominant_category_ids)


def test_gradient_checkpointing_gives_the_same_gradients(config):
    pixel_values = torch.randn(1, 3, 64, 64)
    mask_labels, class_labels = synthetic_targets(1, 64, 64, len(VOCABULARY))
    grads = []
    for checkpointing in (False, True):
        model = make_model(config).train()
        if checkpointing:
            model.activation_checkpointing_enable()
        torch.manual_seed(1)  # same point sampling in the loss
        out = model(pixel_values, class_names=VOCABULARY, mask_labels=mask_labels, class_labels=class_labels)
        out.loss.backward()
        grads.append(model.decoder.query_feat.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_pixel_mask_sets_image_sizes(config):
    model = make_model(config)
    pixel_mask = torch.zeros(2, 64, 96, dtype=torch.long)
    pixel_mask[0, :64, :96] = 1
    pixel_mask[1, :40, :50] = 1
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96), pixel_mask=pixel_mask, class_names=VOCABULARY)
    assert out.image_sizes.tolist() == [[64, 96], [40, 50]]


def test_bad_labels_raise_clear_errors(config):
    model = make_model(config).train()
    pixel_values = torch.randn(1, 3, 64, 64)
    masks = [torch.ones(1, 64, 64)]
    with pytest.raises(ValueError, match="outside the vocabulary of 5 classes"):
        model(pixel_values, class_names=VOCABULARY, mask_labels=masks, class_labels=[torch.tensor([7])])
    with pytest.raises(ValueError, match="do not match the padded input"):
        model(
            pixel_values, class_names=VOCABULARY, mask_labels=[torch.ones(1, 32, 32)], class_labels=[torch.tensor([0])]
        )
    with pytest.raises(ValueError, match="given together"):
        model(pixel_values, class_names=VOCABULARY, mask_labels=masks)
    with pytest.raises(ValueError, match="empty"):
        model(pixel_values, class_names=[])
    with pytest.raises(ValueError, match="dominant_category_ids must index"):
        model(pixel_values, class_names=VOCABULARY, dominant_category_ids=torch.full((1, 4), 99))


def test_geometric_ensemble_matches_the_probability_formula():
    torch.manual_seed(0)
    in_logits, out_logits = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    overlap = torch.tensor([1.0, 0.0, 1.0])
    result = geometric_ensemble(in_logits, out_logits, overlap, 0.4, 0.8)
    p_in, p_out = in_logits[..., :-1].softmax(-1), out_logits[..., :-1].softmax(-1)
    seen = (p_in**0.6 * p_out**0.4).log() * overlap
    unseen = (p_in**0.2 * p_out**0.8).log() * (1 - overlap)
    void = in_logits.softmax(-1)[..., -1:]
    expected = torch.log(torch.cat([(seen + unseen).softmax(-1) * (1 - void), void], -1) + 1e-8)
    torch.testing.assert_close(result, expected, atol=1e-6, rtol=0)
    # Extreme logits: the probability form underflows to log(0) * 0 = NaN, the log-space form does not.
    extreme = torch.tensor([[[200.0, -200.0, 0.0, 0.0]]])
    assert torch.isfinite(geometric_ensemble(extreme, extreme, overlap, 0.4, 0.8)).all()


def test_unknown_forward_arguments_are_refused_with_the_closest_name(config):
    model = make_model(config)
    pixel_values = torch.randn(1, 3, 64, 64)
    with pytest.raises(TypeError, match=r"'class_name' \(did you mean 'class_names'\?\)"):
        model(pixel_values, class_name=["cat", "dog"])
    with pytest.raises(TypeError, match="'frobnicate'"):
        model(pixel_values, frobnicate=True)
    assert model.accepts_loss_kwargs is False  # the Trainer passes no num_items_in_batch


def test_weights_missing_from_a_checkpoint_are_initialised_not_garbage(config, tmp_path):
    from safetensors.torch import load_file, save_file

    model = make_model(config)
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    dropped = [key for key in state if key.startswith("backbone.clip_model.")][::2]  # half the CLIP tensors
    dropped += ["decoder.query_feat.weight"]
    save_file(
        {k: v for k, v in state.items() if k not in dropped}, tmp_path / "model.safetensors", metadata={"format": "pt"}
    )
    # Fill the allocator with NaN so that uninitialised memory would show.
    garbage = [torch.full((1 << 20,), float("nan")) for _ in range(8)]
    del garbage
    reloaded, info = ITAForOpenVocabSegmentation.from_pretrained(tmp_path, output_loading_info=True)
    assert sorted(info["missing_keys"]) == sorted(dropped)
    loaded = reloaded.state_dict()
    for key, value in loaded.items():
        assert torch.isfinite(value.float()).all(), key
        if key in state and key not in dropped:
            assert torch.equal(value, state[key]), key  # loaded tensors are left alone
    for key in dropped:
        if state[key].numel() > 1 and not key.endswith("bias") and "norm" not in key and "ln_" not in key:
            assert not torch.equal(loaded[key], torch.zeros_like(loaded[key])), key  # drawn, not zeroed
    tokens = reloaded.backbone.tokenize(["a photo of a cat."])
    assert torch.isfinite(reloaded.backbone.clip_model.encode_text(tokens)).all()


@pytest.mark.parametrize("from_config", [False, True])
def test_hidden_states_and_attentions_with_mask2former_names(config, from_config):
    model = make_model(config)
    pixel_values = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        plain = model(pixel_values, class_names=VOCABULARY)
        if from_config:
            # transformers refuses `config.output_attentions` under "sdpa", the default: "eager" asks for weights
            # (ITA's decoder gives the same numbers under both).
            model.set_attn_implementation("eager")
            model.config.output_hidden_states = model.config.output_attentions = True
            out = model(pixel_values, class_names=VOCABULARY)
        else:
            out = model(pixel_values, class_names=VOCABULARY, output_hidden_states=True, output_attentions=True)
    fields = (
        "encoder_hidden_states",
        "pixel_decoder_hidden_states",
        "transformer_decoder_hidden_states",
        "attentions",
        "encoder_last_hidden_state",
        "pixel_decoder_last_hidden_state",
        "transformer_decoder_last_hidden_state",
    )
    assert all(getattr(plain, name) is None for name in fields)  # nothing computed unless asked for
    assert [h.shape[1] for h in out.encoder_hidden_states] == model.backbone.feature_channels
    assert [h.shape[-1] for h in out.encoder_hidden_states] == [24, 12, 6, 3]  # strides 4 to 32 of 96 columns
    assert torch.equal(out.encoder_last_hidden_state, out.encoder_hidden_states[-1])
    assert [h.shape[-1] for h in out.pixel_decoder_hidden_states] == [3, 6, 12, 24]  # strides 32, 16, 8, then 4
    assert torch.equal(out.pixel_decoder_last_hidden_state, out.pixel_decoder_hidden_states[-1])
    assert len(out.transformer_decoder_hidden_states) == config.decoder_layers + 1
    assert out.transformer_decoder_last_hidden_state.shape == (1, config.total_queries, config.hidden_dim)
    assert len(out.attentions) == config.decoder_layers
    torch.testing.assert_close(out.masks_queries_logits, plain.masks_queries_logits, atol=1e-4, rtol=1e-4)
    assert len(model(pixel_values, class_names=VOCABULARY, output_attentions=True, return_dict=False)) > len(
        model(
            pixel_values, class_names=VOCABULARY, output_attentions=False, output_hidden_states=False, return_dict=False
        )
    )
