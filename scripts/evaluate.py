#!/usr/bin/env python
"""Evaluate an ITA/FC-CLIP model (mIoU) on the open-vocabulary benchmarks or on your own dataset; the same command
as `ita-evaluate`.

    python scripts/evaluate.py --model fcclip-convnext-large --benchmark ade150 ade847 pc59 pc459 pas20 pas21 \\
        --data-dir $DETECTRON2_DATASETS --output eval/fcclip
    python scripts/evaluate.py --model runs/finetune --dataset data/mine --vocabulary-file classes.txt \\
        --output eval/mine
    accelerate launch --multi_gpu --num_processes 8 scripts/evaluate.py --model fcclip-convnext-large \\
        --benchmark ade847 --data-dir $DETECTRON2_DATASETS --output eval/a847

Writes OUTPUT/<name>/results.json, per_class.csv, confusion_matrix.npy and OUTPUT/results.md. Every label map is
checked before the model is loaded. The protocol is FC-CLIP's: see `ita_segmentation.evaluation.runner`; `--help`
lists every option.
"""

import sys

from ita_cli import evaluate as main

if __name__ == "__main__":
    sys.exit(main(prog="python scripts/evaluate.py"))
