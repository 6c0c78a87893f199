"""FC-CLIP's training numbers that the command line offers as defaults, light to import (standard library only),
so that `ita-train` checks its arguments before torch is loaded. `data.py` and `recipe.py` use them."""

__all__ = [
    "BACKBONE_LR_MULTIPLIER",
    "COCO_DECAY_STEPS",
    "COCO_MAX_ITER",
    "DEFAULT_CROP_SIZE",
    "DEFAULT_MAX_SCALE",
    "DEFAULT_MIN_SCALE",
]

# Mask2Former's COCO panoptic LSJ settings (configs/coco/panoptic-segmentation/Base-COCO-PanopticSegmentation.yaml:
# INPUT.IMAGE_SIZE, MIN_SCALE, MAX_SCALE).
DEFAULT_CROP_SIZE = 1024
DEFAULT_MIN_SCALE = 0.1
DEFAULT_MAX_SCALE = 2.0

# Mask2Former's COCO schedule (SOLVER.STEPS of SOLVER.MAX_ITER), as fractions of the run.
COCO_MAX_ITER = 368_750
COCO_DECAY_STEPS = (327_778, 355_092)
BACKBONE_LR_MULTIPLIER = 0.1  # SOLVER.BACKBONE_MULTIPLIER
