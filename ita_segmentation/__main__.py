"""`python -m ita_segmentation IMAGE_OR_DIR... --model ... --labels ... --output DIR`: the `ita-segment` command."""

import sys

from ita_segmentation.apps.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m ita_segmentation"))
