"""The ways a segmentation data set can be stored (`segmentation_data.load_segmentation_dataset`'s `layout`),
light to import (no third-party module), so that the commands offer them as choices before `datasets` or torch
is loaded."""

__all__ = ["LAYOUTS"]

# auto: label-map folders when DATASET/images/<split> and DATASET/annotations/<split> exist, else what
# datasets.load_dataset reads (and the results-*.parquet folders of ita-segment --format parquet);
# coco_panoptic: COCO's panoptic layout; label_folders: images and label maps in two folder trees;
# synthetic: generated scenes.
LAYOUTS = ("auto", "coco_panoptic", "label_folders", "synthetic")
