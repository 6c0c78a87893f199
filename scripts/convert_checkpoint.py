#!/usr/bin/env python
"""Convert an original FC-CLIP or ITA checkpoint (detectron2 .pth) into a Hugging Face model folder; the same
command as `ita-convert`.

    python scripts/convert_checkpoint.py --checkpoint fcclip_cocopan.pth --output fcclip-convnext-large
    python scripts/convert_checkpoint.py --checkpoint ita.pth --output ita-convnext-large \\
        --category-bank Category/category_tensor.pt --push-to-hub my-user/ita-convnext-large

The output folder must be new or empty (`--overwrite` replaces the model files of a folder that is not). The
variant and the sizes are read from the checkpoint; see `ita_segmentation.hub.conversion`. `--help` lists every option.
"""

import sys

from ita_cli import convert as main

if __name__ == "__main__":
    sys.exit(main(prog="python scripts/convert_checkpoint.py"))
