"""Export an ITA / FC-CLIP model to an ONNX model folder, checked against PyTorch (the `ita-export` command).

    python scripts/export_onnx.py --model path/to/checkpoint --output ita-onnx

See `python scripts/export_onnx.py --help` and `ita_segmentation.onnx.export`.
"""

import sys

from ita_cli import export as main

if __name__ == "__main__":
    sys.exit(main(prog="python scripts/export_onnx.py"))
