"""What makes a saved folder self-describing: the model's source files and the entries that name them.

Every folder the model's `save_pretrained` writes (the Trainer's checkpoints included) carries this model folder's
source files and, in `config.json`, an `auto_map` for `AutoConfig`, `AutoModel`, `AutoImageProcessor` and
`AutoProcessor` plus a `custom_pipelines` entry for the `zero-shot-image-segmentation` task, so that

```python
>>> from transformers import AutoModel, pipeline
>>> model = AutoModel.from_pretrained(folder, trust_remote_code=True)
>>> segmenter = pipeline("zero-shot-image-segmentation", model=folder, trust_remote_code=True)
```

work without this package. transformers copies a folder's source files into its dynamic-module cache and imports
them as one flat package, so they may import each other only relatively (`from .layers import ...`). In this
repository the root modules (`configuration_ita`, ...) are imported by name and the model's files live in the
`modeling_ita` package; `flat_source` rewrites those imports for the flat folder. That is why transformers' own
`register_for_auto_class` is not used: it copies a class's file and its relative imports as they are, so the
absolute `from configuration_ita import ITAConfig` would stay and fail without the package.

This module is exported too (the flat `modeling_ita.py` imports it), so a model loaded with `trust_remote_code`
re-saves with its files: it then copies its flat siblings as they are.
"""

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transformers.dynamic_module_utils import get_imports, get_relative_imports

__all__ = [
    "CUSTOM_PIPELINES",
    "REMOTE_CODE_ENTRY_POINTS",
    "REMOTE_CODE_FILES",
    "config_entries",
    "describe_folder",
    "describe_processor_config",
    "export_remote_code",
    "flat_source",
]

# File in the folder -> file of this model folder (root modules, or `modeling_ita/<file>`). The model folder only:
# no tool of the ita_segmentation package is ever exported.
REMOTE_CODE_FILES = {
    "configuration_ita.py": "configuration_ita.py",
    "image_processing_ita.py": "image_processing_ita.py",
    "postprocessing_ita.py": "postprocessing_ita.py",
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
    "loading.py": "modeling_ita/loading.py",
    "pipeline.py": "modeling_ita/pipeline.py",
    "remote_code.py": "modeling_ita/remote_code.py",
}

# Auto class -> "<file in the folder without .py>.<class>", the `auto_map` entries of a folder.
REMOTE_CODE_ENTRY_POINTS = {
    "AutoConfig": "configuration_ita.ITAConfig",
    "AutoModel": "modeling_ita.ITAForOpenVocabSegmentation",
    "AutoImageProcessor": "image_processing_ita.ITAImageProcessor",
    "AutoProcessor": "processing_ita.ITAProcessor",
}

# transformers' custom-pipeline entry (`config.custom_pipelines`, read by `pipeline()`): the implementation in the
# folder, and the transformers class that loads the model for it.
CUSTOM_PIPELINES = {
    "zero-shot-image-segmentation": {
        "impl": "pipeline.ZeroShotImageSegmentationPipeline",
        "pt": ["AutoModel"],
        "type": "multimodal",
    }
}

_PACKAGE = "modeling_ita"
_ROOT_MODULES = ("configuration_ita", "image_processing_ita", "postprocessing_ita", "processing_ita")
_IMPORT = re.compile(r"^(?P<indent>\s*)from\s+(?P<module>\.*[\w.]*)\s+import\b", re.MULTILINE)
_NOTE = "# From the ita-segmentation model folder, exported for trust_remote_code (imports made relative).\n"


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
    elif module.startswith(_PACKAGE):
        name = module.removeprefix(f"{_PACKAGE}.")
        if name == module or "." in name:
            raise ValueError(f"import from a module of the package (`modeling_ita.<module>`), not {module!r}")
    else:
        return ""
    return _PACKAGE if name == "modeling" else name


def flat_source(source: str, in_package: bool) -> str:
    """`source` with each import of this project rewritten to `from .<file in the folder> import`."""
    if re.search(rf"^\s*import\s+({_PACKAGE}|{'|'.join(_ROOT_MODULES)})\b", source, re.M):
        raise ValueError(
            "write `from <module> import ...` for this project's modules; plain imports cannot be exported"
        )

    def rewrite(match: re.Match[str]) -> str:
        name = _flat_module(match.group("module"), in_package)
        return f"{match.group('indent')}from .{name} import" if name else match.group(0)

    return _IMPORT.sub(rewrite, source)


def _source_root() -> Path | None:
    """The folder holding the root modules and the `modeling_ita` package (a checkout or site-packages), or None
    when this file runs from a flat folder (a model loaded with `trust_remote_code`)."""
    here = Path(__file__).resolve().parent
    if here.name == _PACKAGE and all((here.parent / f"{name}.py").is_file() for name in _ROOT_MODULES):
        return here.parent
    return None


def _flat_sources() -> dict[str, str]:
    """{file in the folder: its text}, rewritten from this model folder, or read from the flat folder this
    module runs in (where transformers copied only the files the loaded classes import)."""
    root = _source_root()
    if root is None:
        here = Path(__file__).resolve().parent
        return {
            name: (here / name).read_text(encoding="utf-8") for name in REMOTE_CODE_FILES if (here / name).is_file()
        }
    sources = {}
    for name, source_path in REMOTE_CODE_FILES.items():
        source = (root / source_path).read_text(encoding="utf-8")
        sources[name] = _NOTE + flat_source(source, in_package="/" in source_path)
    return sources


def export_remote_code(folder: str | os.PathLike[str]) -> list[str]:
    """Write the model's source files flat into `folder`, imports made relative; returns the file names.

    Raises `ValueError` when a file imports something the folder lacks, checked with transformers' own scanner.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = _flat_sources()
    for name, text in written.items():
        (folder / name).write_text(text, encoding="utf-8")
    problems = []
    for name in written:
        path = folder / name
        by_name = sorted({_PACKAGE, *_ROOT_MODULES} & set(get_imports(path)))
        if by_name:
            problems.append(f"{name} imports {by_name} by name")
        problems += [
            f"{name} imports .{relative}, which is not in the folder"
            for relative in get_relative_imports(path)
            if f"{relative}.py" not in written
        ]
    if problems:
        raise ValueError("The exported source files would not load with trust_remote_code: " + "; ".join(problems))
    return sorted(written)


def _present(entries: Mapping[str, Any], folder: Path, reference: str = "impl") -> dict[str, Any]:
    """The entries whose file is in `folder`: an `auto_map` never names a file the folder lacks."""
    return {
        key: value
        for key, value in entries.items()
        if (folder / f"{(value[reference] if isinstance(value, Mapping) else value).split('.')[0]}.py").is_file()
    }


def config_entries(folder: str | os.PathLike[str], with_model: bool = True) -> dict[str, Any]:
    """`config.json`'s `auto_map` and `custom_pipelines` for a folder holding the exported files. Without
    `with_model` (a folder without PyTorch weights, as the ONNX export's) neither `AutoModel` nor the pipeline is
    named: the configuration and the processor load, the model would not."""
    folder = Path(folder)
    auto_map = _present(REMOTE_CODE_ENTRY_POINTS, folder)
    if not with_model:
        auto_map.pop("AutoModel", None)
    return {"auto_map": auto_map, "custom_pipelines": _present(CUSTOM_PIPELINES, folder) if with_model else {}}


def describe_folder(folder: str | os.PathLike[str], with_model: bool = True) -> list[str]:
    """Make a folder already holding `config.json` (and processor files) self-describing: export the source files
    and write the entries naming them into its JSON files. Returns the exported file names."""
    folder = Path(folder)
    written = export_remote_code(folder)
    path = folder / "config.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    for name, value in config_entries(folder, with_model=with_model).items():
        if value:
            data[name] = value
        else:
            data.pop(name, None)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    describe_processor_config(folder)
    return written


def describe_processor_config(folder: str | os.PathLike[str]) -> None:
    """Add the `auto_map` entries to the processor files of `folder` that exist (`processor_config.json`, with the
    image processor nested in it, and `preprocessor_config.json`), for the exported files it holds."""
    folder = Path(folder)
    auto_map = _present(REMOTE_CODE_ENTRY_POINTS, folder)
    for file_name, keys in (
        ("processor_config.json", ("AutoProcessor",)),
        ("preprocessor_config.json", ("AutoImageProcessor",)),
    ):
        path = folder / file_name
        if not path.is_file():
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        _set_auto_map(data, auto_map, keys)
        if isinstance(data.get("image_processor"), dict):
            _set_auto_map(data["image_processor"], auto_map, ("AutoImageProcessor",))
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _set_auto_map(data: dict[str, Any], auto_map: Mapping[str, str], keys: tuple[str, ...]) -> None:
    entries = {key: auto_map[key] for key in keys if key in auto_map}
    if entries:
        data["auto_map"] = entries
    else:
        data.pop("auto_map", None)
