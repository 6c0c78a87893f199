import pytest
import torch
from conftest import tiny_config

from modeling_ita.clip_backbone import ITACLIPBackbone, ITACLIPBackboneOutput, load_open_clip_weights


@pytest.fixture(scope="module")
def backbone():
    return ITACLIPBackbone(tiny_config())


def test_dense_features_strides_and_channels(backbone):
    features = backbone.extract_features(torch.randn(2, 3, 64, 96))
    assert backbone.feature_channels == [24, 32, 48, 64]
    for i, stride in zip(range(2, 6), (4, 8, 16, 32)):
        assert getattr(features, f"res{i}").shape == (2, backbone.feature_channels[i - 2], 64 // stride, 96 // stride)
    assert torch.equal(features.clip_vis_dense, features.res5)  # norm_pre is Identity for ConvNeXt
    # A typed output: the stages finest first for the pixel decoder, fields readable by name.
    assert isinstance(features, ITACLIPBackboneOutput)
    assert [stage.shape[1] for stage in features.feature_maps] == backbone.feature_channels
    assert features.feature_maps[0] is features.res2 and features["clip_vis_dense"] is features.clip_vis_dense


def test_pooled_head_on_a_global_average_equals_clip_image_embedding(backbone):
    images = torch.randn(2, 3, 64, 64)
    dense = backbone.extract_features(images).clip_vis_dense
    pooled = dense.mean(dim=(-2, -1))[:, None, :]  # [B, 1, C]
    via_head = backbone.pooled_embeddings(pooled)[:, 0]
    direct = backbone.encode_image(images, normalize=False)
    torch.testing.assert_close(via_head, direct, atol=1e-5, rtol=1e-5)


def test_frozen_even_in_train_mode(backbone):
    assert all(not p.requires_grad for p in backbone.parameters())
    backbone.train()
    assert not backbone.clip_model.training and not backbone.clip_model.visual.trunk.training
    images = torch.randn(1, 3, 64, 64, requires_grad=True)
    assert not backbone.extract_features(images).res5.requires_grad


def test_load_open_clip_weights_is_strict(tmp_path):
    source, target = ITACLIPBackbone(tiny_config()), ITACLIPBackbone(tiny_config())
    state = source.clip_model.state_dict()
    torch.save(state, tmp_path / "open_clip_pytorch_model.bin")
    load_open_clip_weights(target, tmp_path / "open_clip_pytorch_model.bin")
    for key, value in source.clip_model.state_dict().items():
        assert torch.equal(value, target.clip_model.state_dict()[key]), key

    broken = dict(state)
    broken.pop("ln_final.weight")
    broken["extra.weight"] = torch.zeros(1)
    torch.save(broken, tmp_path / "broken.bin")
    with pytest.raises(KeyError, match=r"1 missing keys \['ln_final.weight'\].*1 unexpected keys \['extra.weight'\]"):
        load_open_clip_weights(target, tmp_path / "broken.bin")
