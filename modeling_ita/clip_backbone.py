"""The frozen OpenCLIP ConvNeXt CLIP: dense features for the pixel decoder, the pooled-feature head of the
out-of-vocabulary classifier, full image embeddings for dominant-category unearthing, and text embeddings.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from os import PathLike
from typing import Any, cast

import open_clip
import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as hf_init
from transformers.utils.generic import ModelOutput

from configuration_ita import ITAConfig

__all__ = [
    "ITACLIPBackbone",
    "ITACLIPBackboneOutput",
    "build_causal_mask",
    "init_clip_weights",
    "load_open_clip_weights",
    "rebuild_causal_mask",
]


def build_causal_mask(
    length: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Additive causal mask [L, L]: -inf above the diagonal, as open_clip's text transformer expects."""
    return torch.full((length, length), float("-inf"), device=device, dtype=dtype).triu_(1)


@dataclass
class ITACLIPBackboneOutput(ModelOutput):
    """The frozen CLIP trunk's dense features (`ITACLIPBackbone.extract_features`), named as in FC-CLIP.

    Args:
        res2: `[B, C_2, H/4, W/4]` the ConvNeXt trunk's first stage.
        res3: `[B, C_3, H/8, W/8]` its second stage.
        res4: `[B, C_4, H/16, W/16]` its third stage.
        res5: `[B, C_5, H/32, W/32]` its last stage.
        clip_vis_dense: `[B, C_5, H/32, W/32]` the last stage through the trunk's `norm_pre`: the dense CLIP
            features that CLIP's own pooling head (`pooled_embeddings`) maps into the joint space.
    """

    res2: torch.Tensor | None = None
    res3: torch.Tensor | None = None
    res4: torch.Tensor | None = None
    res5: torch.Tensor | None = None
    clip_vis_dense: torch.Tensor | None = None

    @property
    def feature_maps(self) -> tuple[torch.Tensor, ...]:
        """The four stages, finest first (strides 4, 8, 16, 32): the pixel decoder's input."""
        return tuple(stage for stage in (self.res2, self.res3, self.res4, self.res5) if stage is not None)


@functools.lru_cache(maxsize=4)
def _tokenizer(context_length: int) -> Any:
    # The BPE vocabulary ships inside the open_clip wheel: building it needs no network.
    return open_clip.tokenizer.SimpleTokenizer(context_length=context_length)


class ITACLIPBackbone(nn.Module):
    """OpenCLIP CLIP with a timm ConvNeXt trunk, frozen: eval mode, no gradients, even under `model.train()`.

    The open_clip model lives in `clip_model`, so its state-dict keys (`backbone.clip_model.*` inside the full
    model) are those of the original FC-CLIP/ITA checkpoints and of open_clip's own checkpoints.
    """

    def __init__(self, config: ITAConfig):
        super().__init__()
        clip_config = config.clip_config
        self.clip_model = open_clip.model.CLIP(
            embed_dim=clip_config["embed_dim"],
            vision_cfg=dict(cast(dict[str, Any], clip_config["vision_cfg"])),
            text_cfg=dict(cast(dict[str, Any], clip_config["text_cfg"])),
        )
        self.clip_model.requires_grad_(False)
        self.clip_model.eval()
        self.context_length = self.clip_model.context_length
        trunk = self.clip_model.visual.trunk
        # Channels of res2..res5 (stride 4, 8, 16, 32).
        self.feature_channels = [info["num_chs"] for info in trunk.feature_info]
        # Initialised as a whole by `init_clip_weights` (the model's `_init_weights`), not module by module.
        for module in self.clip_model.modules():
            module._ita_clip_part = True

    def train(self, mode: bool = True) -> ITACLIPBackbone:
        super().train(mode)
        self.clip_model.eval()  # frozen: drop-path and dropout stay off
        # `from_pretrained` swaps in new parameters that require gradients; it ends with `model.eval()`, and
        # Trainer calls `model.train()`, so re-freezing here covers both.
        self.clip_model.requires_grad_(False)
        return self

    @property
    def embed_dim(self) -> int:
        return int(self.clip_model.text_projection.shape[-1])

    @property
    def logit_scale(self) -> nn.Parameter:
        logit_scale: nn.Parameter = self.clip_model.logit_scale
        return logit_scale

    # ----------------------------------------------------------------------------------------------- image side
    @torch.no_grad()
    def extract_features(self, pixel_values: torch.Tensor) -> ITACLIPBackboneOutput:
        """Dense features of the ConvNeXt trunk: its four stages `res2`..`res5` (stride 4..32) and `clip_vis_dense`."""
        trunk = self.clip_model.visual.trunk
        stages = []
        hidden = trunk.stem(pixel_values)
        for stage in trunk.stages:
            hidden = stage(hidden)
            stages.append(hidden)  # [B, C_i, H / 2^(i+2), W / 2^(i+2)]
        res2, res3, res4, res5 = stages
        return ITACLIPBackboneOutput(res2=res2, res3=res3, res4=res4, res5=res5, clip_vis_dense=trunk.norm_pre(hidden))

    @torch.no_grad()
    def pooled_embeddings(self, pooled_features: torch.Tensor) -> torch.Tensor:
        """CLIP's own head on mask-pooled dense features: [B, Q, C] -> [B, Q, D] (not normalised)."""
        batch, num_queries, channels = pooled_features.shape
        x = pooled_features.reshape(batch * num_queries, channels, 1, 1)
        x = self.clip_model.visual.trunk.head(x)  # LayerNorm2d + flatten
        x = self.clip_model.visual.head(x)  # MLP projection to the joint space
        embeddings: torch.Tensor = x.view(batch, num_queries, -1)
        return embeddings

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Full CLIP image embedding of CLIP-normalised images [B, 3, S, S] -> [B, D]."""
        embeddings = self.clip_model.visual(images)
        return F.normalize(embeddings, dim=-1) if normalize else embeddings

    # ------------------------------------------------------------------------------------------------ text side
    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """open_clip BPE tokens [N, context_length] (start token, text, end token, zero padding)."""
        tokens: torch.Tensor = _tokenizer(self.context_length)(list(texts))
        return tokens

    @torch.no_grad()
    def encode_text(self, tokens: torch.Tensor, normalize: bool = False, truncate_context: bool = True) -> torch.Tensor:
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


# timm's ConvNeXt layer-scale start value (`ls_init_value`), the one open_clip's timm trunks are built with.
CONVNEXT_LAYER_SCALE_INIT = 1e-6
NORM_LAYERS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)


@torch.no_grad()
def init_clip_weights(clip_model: open_clip.model.CLIP) -> None:
    """Initialise every CLIP tensor by the rules it was built with: timm's for the ConvNeXt trunk (truncated normal
    0.02, zero biases, unit norms, layer scale 1e-6), PyTorch's defaults for open_clip's projection head and the
    text tower's other linear layers, open_clip's for the text tower (its per-block standard deviations) and
    the logit scale (log(1/0.07)), and the causal mask.

    transformers' guarded init functions leave loaded tensors alone, so after `from_pretrained` only the tensors
    a checkpoint lacks are drawn here: random but finite, never uninitialised memory.
    """
    norms = {id(p) for m in clip_model.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters(recurse=False)}
    for module in clip_model.modules():
        if isinstance(module, nn.Linear) and not _inside(module, clip_model.visual.trunk):
            _torch_default_linear_init(module)  # open_clip leaves these at PyTorch's defaults
    for name, parameter in clip_model.visual.trunk.named_parameters():
        if id(parameter) in norms:
            (hf_init.ones_ if name.endswith("weight") else hf_init.zeros_)(parameter)
        elif name.endswith("gamma"):
            hf_init.constant_(parameter, CONVNEXT_LAYER_SCALE_INIT)
        elif parameter.ndim > 1:
            hf_init.trunc_normal_(parameter, std=0.02)
        else:
            hf_init.zeros_(parameter)

    width = clip_model.transformer.width
    attn_std = width**-0.5
    proj_std = width**-0.5 * (2 * clip_model.transformer.layers) ** -0.5
    fc_std = (2 * width) ** -0.5
    hf_init.normal_(clip_model.token_embedding.weight, std=0.02)
    hf_init.normal_(clip_model.positional_embedding, std=0.01)
    for block in clip_model.transformer.resblocks:
        for weight, std in (
            (block.attn.in_proj_weight, attn_std),
            (block.attn.out_proj.weight, proj_std),
            (block.mlp.c_fc.weight, fc_std),
            (block.mlp.c_proj.weight, proj_std),
        ):
            hf_init.normal_(weight, std=std)
        for bias in (block.attn.in_proj_bias, block.attn.out_proj.bias):  # MultiheadAttention zeroes them
            if bias is not None:
                hf_init.zeros_(bias)
        for norm in (block.ln_1, block.ln_2):
            hf_init.ones_(norm.weight)
            hf_init.zeros_(norm.bias)
    hf_init.ones_(clip_model.ln_final.weight)
    hf_init.zeros_(clip_model.ln_final.bias)
    if isinstance(clip_model.text_projection, nn.Linear):
        hf_init.normal_(clip_model.text_projection.weight, std=attn_std)
        if clip_model.text_projection.bias is not None:
            hf_init.zeros_(clip_model.text_projection.bias)
    elif clip_model.text_projection is not None:
        hf_init.normal_(clip_model.text_projection, std=attn_std)
    hf_init.constant_(clip_model.logit_scale, math.log(1 / 0.07))
    if getattr(clip_model, "logit_bias", None) is not None:
        hf_init.zeros_(clip_model.logit_bias)
    rebuild_causal_mask(clip_model)


def _inside(module: nn.Module, container: nn.Module) -> bool:
    return any(module is inner for inner in container.modules())


def _torch_default_linear_init(linear: nn.Linear) -> None:
    """`nn.Linear.reset_parameters`, through transformers' guarded init functions."""
    hf_init.kaiming_uniform_(linear.weight, a=math.sqrt(5))
    if linear.bias is not None:
        bound = 1 / math.sqrt(linear.in_features) if linear.in_features > 0 else 0
        hf_init.uniform_(linear.bias, -bound, bound)


def rebuild_causal_mask(clip_model: open_clip.model.CLIP) -> None:
    """Refill open_clip's causal text mask, a non-persistent buffer.

    transformers 5 builds models on the meta device and refills non-persistent buffers with uninitialised
    memory on `from_pretrained`; without this the text embeddings of open_clip's own `encode_text` come out
    silently wrong after a reload. (`ITACLIPBackbone.encode_text` builds its own mask and is not affected.)
    """
    mask = getattr(clip_model, "attn_mask", None)
    if mask is not None:
        with torch.no_grad():
            mask.copy_(build_causal_mask(mask.shape[-1], device=mask.device, dtype=mask.dtype))


def load_open_clip_weights(backbone: ITACLIPBackbone, checkpoint_path: str | PathLike[str]) -> ITACLIPBackbone:
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
