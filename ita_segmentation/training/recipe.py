"""FC-CLIP's optimiser and learning-rate schedule (Mask2Former's `train_net.py` and COCO panoptic base config).

- AdamW, lr 1e-4, weight decay 0.05, except no weight decay on the parameters of normalisation layers and of
  embedding layers (`build_optimizer`'s `WEIGHT_DECAY_NORM` and `WEIGHT_DECAY_EMBED` are 0): here the
  decoder's `query_feat`, `query_embed`, `level_embed`, the `void_embedding`, and the DCU projection (the
  original's `add_tgt_em`, an `nn.Embedding` inside the backbone). Biases of linear and convolution layers,
  the pixel decoder's `level_embed` (a bare parameter there) and the decoder's `logit_scale` keep weight
  decay, as in the original.
- Learning rate x 0.1 on the backbone side: in ITA the frozen CLIP plus the DCU projection, so only the
  projection is affected (CLIP is frozen and left out of the optimiser).
- Step schedule: 10 warm-up iterations (linear from `lr_warmup_factor`, 1.0 in Mask2Former's config, which
  makes the warm-up flat), then x 0.1 at iterations 327,778 and 355,092 of 368,750, i.e. at the same fractions
  of `max_steps`.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from modeling_ita.clip_backbone import ITACLIPBackbone
from modeling_ita.dominant_categories import ITADominantCategoryUnearthing

from .defaults import BACKBONE_LR_MULTIPLIER, COCO_DECAY_STEPS, COCO_MAX_ITER

__all__ = [
    "BACKBONE_LR_MULTIPLIER",
    "COCO_DECAY_STEPS",
    "COCO_MAX_ITER",
    "StepLRSchedule",
    "build_parameter_groups",
    "scaled_decay_steps",
]

NORM_LAYERS = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.modules.batchnorm._NormBase)


def build_parameter_groups(
    model: nn.Module, learning_rate: float, weight_decay: float, backbone_lr_multiplier: float = 0.1
) -> list[dict[str, Any]]:
    """AdamW parameter groups of FC-CLIP/Mask2Former's `build_optimizer` (see the module docstring).

    Frozen parameters (CLIP) are left out. Returns up to four groups, each with `params`, `param_names`, `lr`,
    `weight_decay` and a `name` (`"decay"`, `"no_decay"`, `"backbone_decay"`, `"backbone_no_decay"`).
    """
    backbone_side = {
        id(parameter)
        for module in model.modules()
        if isinstance(module, (ITACLIPBackbone, ITADominantCategoryUnearthing))
        for parameter in module.parameters()
    }
    groups: dict[str, dict[str, Any]] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        # Embeddings: nn.Embedding layers, and the DCU projection (the original's `add_tgt_em` embedding).
        no_decay_module = isinstance(module, NORM_LAYERS + (nn.Embedding, ITADominantCategoryUnearthing))
        for parameter_name, parameter in module.named_parameters(recurse=False):
            if not parameter.requires_grad or id(parameter) in seen:
                continue
            seen.add(id(parameter))
            backbone = id(parameter) in backbone_side
            name = ("backbone_" if backbone else "") + ("no_decay" if no_decay_module else "decay")
            group = groups.setdefault(
                name,
                {
                    "name": name,
                    "params": [],
                    "param_names": [],
                    "lr": learning_rate * (backbone_lr_multiplier if backbone else 1.0),
                    "weight_decay": 0.0 if no_decay_module else weight_decay,
                },
            )
            group["params"].append(parameter)
            group["param_names"].append(f"{module_name}.{parameter_name}" if module_name else parameter_name)
    order = ("decay", "no_decay", "backbone_decay", "backbone_no_decay")
    return [groups[name] for name in order if name in groups]


def scaled_decay_steps(num_training_steps: int, fractions: Sequence[float]) -> list[int]:
    """Decay iterations at `fractions` of the run (COCO's 327,778 and 355,092 of 368,750 by default)."""
    return [int(round(fraction * num_training_steps)) for fraction in fractions]


@dataclass
class StepLRSchedule:
    """Learning-rate factor at an iteration: detectron2's `WarmupMultiStepLR` with linear warm-up.

    During the first `warmup_steps` iterations the factor ramps linearly from `warmup_factor` to 1; it is
    multiplied by `decay_factor` at each of `decay_steps`.
    """

    warmup_steps: int = 10
    warmup_factor: float = 1.0
    decay_steps: tuple[int, ...] = ()
    decay_factor: float = 0.1

    def __call__(self, step: int) -> float:
        factor = self.decay_factor ** sum(step >= milestone for milestone in self.decay_steps)
        if step < self.warmup_steps:
            alpha = step / self.warmup_steps
            factor *= self.warmup_factor * (1 - alpha) + alpha
        return factor
