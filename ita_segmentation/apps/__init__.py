"""Apps wing: the `zero-shot-image-segmentation` pipeline, the `ita-segment` command line and overlays."""
