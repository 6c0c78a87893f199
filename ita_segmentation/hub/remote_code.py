"""The model's source files for `trust_remote_code`: which files a Hub folder carries, and their imports.

transformers copies a folder's source files into its dynamic-module cache and imports them as one flat package,
so they may import each other only relatively (`from .layers import ...`). In this repository the root modules
(`configuration_ita`, `image_processing_ita`, `processing_ita`) are imported by name and the model's files live
in the `modeling_ita` package; `flat_source` rewrites those imports for the flat folder.
"""

import os
import re
from pathlib import Path

from transformers.dynamic_module_utils import get_imports, get_relative_imports

__all__ = ["REMOTE_CODE_ENTRY_POINTS", "REMOTE_CODE_FILES", "export_remote_code", "flat_source"]

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]

# File in the folder -> file in this repository. The figure modules only: no wing is ever exported.
REMOTE_CODE_FILES = {
    "configuration_ita.py": "configuration_ita.py",
    "image_processing_ita.py": "image_processing_ita.py",
    "processing_ita.py": "processing_ita.py",
    "modeling_ita.py": "modeling_ita/modeling.py",
    "clip_backbone.py": "modeling_ita/clip_backbone.py",
    "vocabulary.py": "modeling_ita/vocabulary.py",
    "dominant_categories.py": "modeling_ita/dominant_categories.py",
    "pixel_decoder.py": "modeling_ita/pixel_decoder.py",
    "aggregation_decoder.py": "modeling_ita/aggregation_decoder.py",
    "classifiers.py": "modeling_ita/classifiers.py",
    "layers.py": "modeling_ita/layers.py",
    "kernels.py": "modeling_ita/kernels.py",
    "loss.py": "modeling_ita/loss.py",
    "postprocessing_ita.py": "postprocessing_ita.py",
}

# Auto class -> "<file in the folder without .py>.<class>", the `auto_map` entries of a folder.
REMOTE_CODE_ENTRY_POINTS = {
    "AutoConfig": "configuration_ita.ITAConfig",
    "AutoModel": "modeling_ita.ITAForOpenVocabSegmentation",
    "AutoImageProcessor": "image_processing_ita.ITAImageProcessor",
    "AutoProcessor": "processing_ita.ITAProcessor",
}

_ROOT_MODULES = ("configuration_ita", "image_processing_ita", "postprocessing_ita", "processing_ita")
_IMPORT = re.compile(r"^(?P<indent>\s*)from\s+(?P<module>\.*[\w.]*)\s+import\b", re.MULTILINE)


def _flat_module(module: str, in_package: bool) -> str:
    """The folder's module name for an import written in this repository, or '' for a third-party import."""
    if module.startswith(".."):
        raise ValueError(f"a model file imports {module!r} from outside its package (a wing): it cannot be exported")
    if module.startswith("."):
        name = module[1:]
        if not in_package or not name or "." in name:
            raise ValueError(f"cannot export the relative import {module!r}")
    elif module in _ROOT_MODULES:
        name = module
    elif module.startswith("modeling_ita"):
        name = module.removeprefix("modeling_ita.")
        if name == module or "." in name:
            raise ValueError(f"import from a module of the package (`modeling_ita.<module>`), not {module!r}")
    else:
        return ""
    return "modeling_ita" if name == "modeling" else name


def flat_source(source: str, in_package: bool) -> str:
    """`source` with each import of this project rewritten to `from .<file in the folder> import`."""
    if re.search(
        r"^\s*import\s+(modeling_ita|configuration_ita|image_processing_ita|postprocessing_ita|processing_ita)\b",
        source,
        re.M,
    ):
        raise ValueError(
            "write `from <module> import ...` for this project's modules; plain imports cannot be exported"
        )

    def rewrite(match: re.Match[str]) -> str:
        name = _flat_module(match.group("module"), in_package)
        return f"{match.group('indent')}from .{name} import" if name else match.group(0)

    return _IMPORT.sub(rewrite, source)


def export_remote_code(folder: str | os.PathLike[str]) -> list[str]:
    """Write `REMOTE_CODE_FILES` flat into `folder`, imports rewritten; returns the file names.

    Raises `ValueError` when a file imports something the folder lacks, checked with transformers' own scanner.
    """
    folder = Path(folder)
    for name, source_path in REMOTE_CODE_FILES.items():
        source = (REPOSITORY_ROOT / source_path).read_text(encoding="utf-8")
        note = "# From the ita-segmentation package, exported for trust_remote_code (imports made relative).\n"
        (folder / name).write_text(note + flat_source(source, in_package="/" in source_path), encoding="utf-8")
    problems = []
    for name in REMOTE_CODE_FILES:
        path = folder / name
        by_name = sorted({"modeling_ita", *_ROOT_MODULES} & set(get_imports(path)))
        if by_name:
            problems.append(f"{name} imports {by_name} by name")
        problems += [
            f"{name} imports .{relative}, which is not in the folder"
            for relative in get_relative_imports(path)
            if f"{relative}.py" not in REMOTE_CODE_FILES
        ]
    if problems:
        raise ValueError("The exported source files would not load with trust_remote_code: " + "; ".join(problems))
    return sorted(REMOTE_CODE_FILES)
