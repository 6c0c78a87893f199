"""`python -m modeling_ita IMAGE_OR_DIR... --model ... --labels ... --output DIR`: the `ita-segment` command."""

import sys

from .apps.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m modeling_ita"))
