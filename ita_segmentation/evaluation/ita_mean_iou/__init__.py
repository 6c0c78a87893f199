"""The `evaluate` metric module; load it by path with `evaluate.load(ita_segmentation.evaluation.METRIC_PATH)`.

This `__init__.py` only makes the folder a package, so that `ita_mean_iou.py` ships with the wheel.
"""
