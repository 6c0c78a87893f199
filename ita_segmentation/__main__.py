"""`python -m ita_segmentation IMAGE_OR_DIR... --model ... --labels ... --output DIR`: the `ita-segment` command."""

import sys

from ita_cli import segment

if __name__ == "__main__":
    sys.exit(segment(prog="python -m ita_segmentation"))
