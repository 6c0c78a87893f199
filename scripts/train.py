#!/usr/bin/env python
"""Train ITA or FC-CLIP with the transformers Trainer (FC-CLIP's recipe by default); the same command as `ita-train`.

Every argument of `transformers.TrainingArguments` is accepted, plus the model, data and recipe arguments of
`ita_segmentation.training` (`--help` lists those and the common TrainingArguments options; `--help-all` lists
every option). Every label map is checked before the model is built: any problem
stops the run with the full list (`--skip_bad_samples` leaves the bad samples out instead). Examples:

    # ITA on COCO panoptic from the original CLIP (batch 16 = 8 GPUs x 2)
    accelerate launch --multi_gpu --num_processes 8 scripts/train.py \
        --clip_checkpoint open_clip_pytorch_model.bin \
        --dataset_layout coco_panoptic --dataset_name_or_path $DETECTRON2_DATASETS/coco --train_split train2017 \
        --per_device_train_batch_size 2 --max_steps 368750 --bf16 --dataloader_num_workers 4 \
        --save_steps 5000 --output_dir runs/ita_coco

    # Rank the dominant categories once, then train from the precomputed column
    python scripts/train.py --model_name_or_path runs/ita_coco --dataset_layout coco_panoptic \
        --dataset_name_or_path $DETECTRON2_DATASETS/coco --precompute_dominant_categories_to data/coco_dc \
        --output_dir runs/unused
    python scripts/train.py ... --dataset_name_or_path data/coco_dc --segments_column segments_info \
        --dominant_categories column

    # Label-map folders (data/mine/images/train + data/mine/annotations/train), with a vocabulary file
    python scripts/train.py --model_name_or_path MODEL --dataset_name_or_path data/mine \
        --vocabulary_file classes.txt --crop_size 512 --max_steps 20000 --output_dir runs/mine

    # Resume the last checkpoint in --output_dir after a stop
    python scripts/train.py ... --output_dir runs/mine --resume_from_checkpoint last
"""

import sys

from ita_cli import train

if __name__ == "__main__":
    sys.exit(train(prog="python scripts/train.py"))
