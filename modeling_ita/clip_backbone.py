"""The frozen OpenCLIP ConvNeXt CLIP: dense features for the pixel decoder, the pooled-feature head of the
out-of-vocabulary classifier, full image embeddings for dominant-category unearthing, and text embeddings.
"""

import functools

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ITACLIPBackbone", "build_causal_mask", "load_open_clip_weights", "rebuild_causal_mask"]


def build_causal_mask(length, device=None, dtype=torch.float32):
    """Additive causal mask [L, L]: -inf above the diagonal, as open_clip's text transformer expects."""
    return torch.full((length, length), float("-inf"), device=device, dtype=dtype).triu_(1)


@functools.lru_cache(maxsize=4)
def _tokenizer(context_length):
    # The BPE vocabulary ships inside the open_clip wheel: building it needs no network.
    return open_clip.tokenizer.SimpleTokenizer(context_length=context_length)


class ITACLIPBackbone(nn.Module):
    """OpenCLIP CLIP with a timm ConvNeXt trunk, frozen: eval mode, no gradients, even under `model.train()`.

    The open_clip model lives in `clip_model`, so its state-dict keys (`backbone.clip_model.*` inside the full
    model) are those of the original FC-CLIP/ITA checkpoints and of open_clip's own checkpoints.
    """

    def __init__(self, config):
        super().__init__()
        clip_config = config.clip_config
        self.clip_model = open_clip.model.CLIP(
            embed_dim=clip_config["embed_dim"],
            vision_cfg=dict(clip_config["vision_cfg"]),
            text_cfg=dict(clip_config["text_cfg"]),
        )
        self.clip_model.requires_grad_(False)
        self.clip_model.eval()
        self.context_length = self.clip_model.context_length
        trunk = self.clip_model.visual.trunk
        # Channels of res2..res5 (stride 4, 8, 16, 32).
        self.feature_channels = [info["num_chs"] for info in trunk.feature_info]
        # Skipped by the model-level weight initialisation: CLIP keeps open_clip's own init (or loaded weights).
        for module in self.clip_model.modules():
            module._ita_skip_init = True

    def train(self, mode=True):
        super().train(mode)
        self.clip_model.eval()  # frozen: drop-path and dropout stay off
        # `from_pretrained` swaps in new parameters that require gradients; it ends with `model.eval()`, and
        # Trainer calls `model.train()`, so re-freezing here covers both.
        self.clip_model.requires_grad_(False)
        return self

    @property
    def embed_dim(self):
        return self.clip_model.text_projection.shape[-1]

    @property
    def logit_scale(self):
        return self.clip_model.logit_scale

    # ----------------------------------------------------------------------------------------------- image side
    @torch.no_grad()
    def extract_features(self, pixel_values):
        """Dense features of the ConvNeXt trunk: `res2`..`res5` (stride 4..32) and `clip_vis_dense`."""
        trunk = self.clip_model.visual.trunk
        features = {}
        hidden = trunk.stem(pixel_values)
        for i, stage in enumerate(trunk.stages):
            hidden = stage(hidden)
            features[f"res{i + 2}"] = hidden  # [B, C_i, H / 2^(i+2), W / 2^(i+2)]
        features["clip_vis_dense"] = trunk.norm_pre(hidden)
        return features

    @torch.no_grad()
    def pooled_embeddings(self, pooled_features):
        """CLIP's own head on mask-pooled dense features: [B, Q, C] -> [B, Q, D] (not normalised)."""
        batch, num_queries, channels = pooled_features.shape
        x = pooled_features.reshape(batch * num_queries, channels, 1, 1)
        x = self.clip_model.visual.trunk.head(x)  # LayerNorm2d + flatten
        x = self.clip_model.visual.head(x)  # MLP projection to the joint space
        return x.view(batch, num_queries, -1)

    @torch.no_grad()
    def encode_image(self, images, normalize=True):
        """Full CLIP image embedding of CLIP-normalised images [B, 3, S, S] -> [B, D]."""
        embeddings = self.clip_model.visual(images)
        return F.normalize(embeddings, dim=-1) if normalize else embeddings

    # ------------------------------------------------------------------------------------------------ text side
    def tokenize(self, texts):
        """open_clip BPE tokens [N, context_length] (start token, text, end token, zero padding)."""
        return _tokenizer(self.context_length)(list(texts))

    @torch.no_grad()
    def encode_text(self, tokens, normalize=False, truncate_context=True):
        """Text embeddings [N, D] of `tokens` [N, L].

        The text transformer is causal, so the end-of-text output depends only on the tokens before it: with
        `truncate_context` the sequence is cut after the batch's last end-of-text token, which gives the same
        embeddings as the full 77-token context for a fraction of the cost.
        """
        clip = self.clip_model
        tokens = tokens.to(clip.token_embedding.weight.device)
        eot_positions = tokens.argmax(dim=-1)  # the end-of-text token has the largest id
        if truncate_context:
            tokens = tokens[:, : int(eot_positions.max()) + 1]
        length = tokens.shape[1]
        cast_dtype = clip.transformer.get_cast_dtype()
        x = clip.token_embedding(tokens).to(cast_dtype)  # [N, L, width]
        x = x + clip.positional_embedding[:length].to(cast_dtype)
        x = clip.transformer(x, attn_mask=build_causal_mask(length, device=x.device, dtype=x.dtype))
        x = clip.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot_positions] @ clip.text_projection  # [N, D]
        return F.normalize(x, dim=-1) if normalize else x


def rebuild_causal_mask(clip_model):
    """Refill open_clip's causal text mask, a non-persistent buffer.

    transformers 5 builds models on the meta device and refills non-persistent buffers with uninitialised
    memory on `from_pretrained`; without this the text embeddings of open_clip's own `encode_text` come out
    silently wrong after a reload. (`ITACLIPBackbone.encode_text` builds its own mask and is not affected.)
    """
    mask = getattr(clip_model, "attn_mask", None)
    if mask is not None:
        with torch.no_grad():
            mask.copy_(build_causal_mask(mask.shape[-1], device=mask.device, dtype=mask.dtype))


def load_open_clip_weights(backbone, checkpoint_path):
    """Fill `backbone.clip_model` from an open_clip checkpoint file, strictly.

    Use it to train from scratch with the original CLIP, e.g. the `open_clip_pytorch_model.bin` of
    `laion/CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft-soup`. The file is read with `weights_only=True`;
    a bare state dict or a dict holding one under `state_dict`/`model` is accepted, and a `module.` prefix
    (distributed training) is dropped. Missing or unexpected keys raise a `KeyError` listing them.
    """
    state_dict = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state_dict, dict) and key in state_dict and isinstance(state_dict[key], dict):
            state_dict = state_dict[key]
    if not isinstance(state_dict, dict):
        raise ValueError(f"{checkpoint_path}: expected a state dict, got {type(state_dict).__name__}")
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    expected = set(backbone.clip_model.state_dict())
    missing = sorted(expected - set(state_dict))
    unexpected = sorted(set(state_dict) - expected)
    if missing or unexpected:
        raise KeyError(
            f"{checkpoint_path} does not match the CLIP of this config: "
            f"{len(missing)} missing keys {missing[:20]}, {len(unexpected)} unexpected keys {unexpected[:20]}"
        )
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(backbone.clip_model.state_dict()[k].shape)}"
        for k, v in state_dict.items()
        if tuple(v.shape) != tuple(backbone.clip_model.state_dict()[k].shape)
    ]
    if mismatched:
        raise ValueError(f"{checkpoint_path}: shape mismatch for {mismatched[:20]}")
    backbone.clip_model.load_state_dict(state_dict, strict=True)
    rebuild_causal_mask(backbone.clip_model)
    return backbone
