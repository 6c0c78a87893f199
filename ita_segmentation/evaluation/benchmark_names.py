"""The registered benchmarks' names and display names, light to import (standard library only), so that
`ita-evaluate --benchmark` is checked before torch and `datasets` are imported. `benchmarks.BENCHMARKS` holds
the rest of each benchmark (class list, ignore index, folders)."""

import os
import re
from pathlib import Path

__all__ = [
    "BENCHMARK_DISPLAY_NAMES",
    "PANOPTIC_BENCHMARK_NAMES",
    "PUBLISHED_FC_CLIP_MIOU",
    "VOCABULARY_DIR",
    "benchmark_name",
    "benchmark_vocabulary_file",
    "dataset_result_name",
]

# FC-CLIP's class lists of the benchmarks, `<name>.txt` each.
VOCABULARY_DIR = Path(__file__).parent / "vocabularies"

# name -> display name, in the order of the papers' tables.
BENCHMARK_DISPLAY_NAMES = {
    "ade150": "A-150",
    "ade847": "A-847",
    "pc59": "PC-59",
    "pc459": "PC-459",
    "pas20": "PAS-20",
    "pas21": "PAS-21",
}

# mIoU (percent) of FC-CLIP ConvNeXt-L with its released COCO weights (`fcclip_cocopan.pth`) on the full validation
# splits, FC-CLIP paper Table 1: a reference for readers of results.md and the model card, never a score of a
# model evaluated here.
PUBLISHED_FC_CLIP_MIOU = {"ade847": 14.8, "pc459": 18.2, "ade150": 34.1, "pc59": 58.4, "pas20": 95.4, "pas21": 81.8}


def benchmark_name(value: str) -> str:
    """The registered name of a benchmark given by name or display name, in any case, with or without `-`/`_`
    (`"A-150"`, `"ade_150"` -> `"ade150"`); a `KeyError` listing the registered names otherwise."""
    key = value.lower().replace("-", "").replace("_", "")
    for name, display_name in BENCHMARK_DISPLAY_NAMES.items():
        if key in (name, display_name.lower().replace("-", "")):
            return name
    raise KeyError(f"Unknown benchmark {value!r}; registered: {', '.join(BENCHMARK_DISPLAY_NAMES)}")


def benchmark_vocabulary_file(name: str) -> Path:
    """FC-CLIP's class list of the benchmark `name` (given as `benchmark_name` takes it)."""
    return VOCABULARY_DIR / f"{benchmark_name(name)}.txt"


def dataset_result_name(source: str | os.PathLike[str]) -> str:
    """The results subfolder (and table name) of a dataset given by path or Hub id: the last part of it, with
    anything but letters, digits, `.`, `_` and `-` replaced by `_`."""
    name = os.path.basename(str(source).rstrip("/\\")) or str(source)
    return re.sub(r"[^\w.-]+", "_", name)


# The registered panoptic benchmarks (`panoptic.PANOPTIC_BENCHMARKS` holds the rest of each).
PANOPTIC_BENCHMARK_NAMES = ("coco_panoptic", "ade20k_panoptic")
