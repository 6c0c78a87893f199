"""The house's layout, read from the source by tools/import_graph.py: no circles, the model folder imports no
wing or command, no wing imports a command; and `import modeling_ita` loads no wing and no heavy dependency."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import import_graph  # noqa: E402

WINGS = ("apps", "evaluation", "training", "hub", "onnx")


def test_the_project_breaks_no_layout_rule():
    graph = import_graph.build_graph()
    assert {"modeling_ita.modeling", "image_processing_ita", "ita_cli"} <= set(graph.files)
    assert [wing for wing in WINGS if f"ita_segmentation.{wing}" in graph.files] == list(WINGS)
    assert import_graph.violations(graph) == []


def _write(root: Path, files: dict[str, str]) -> None:
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)


def test_each_rule_catches_a_planted_break(tmp_path):
    """A toy tree with one break of every rule: each is reported, and the clean edges are not."""
    _write(
        tmp_path,
        {
            "configuration_ita.py": "import json\n",
            "image_processing_ita.py": "from modeling_ita.layers import x\n",  # a root file into the package
            "modeling_ita/__init__.py": "from .layers import x\n",
            "modeling_ita/layers.py": "import datasets\ndef f():\n    from ita_segmentation.training import y\n",
            "modeling_ita/pixel.py": "def f():\n    from .layers import x\n",
            "ita_segmentation/__init__.py": "",
            "ita_segmentation/files.py": "from .apps.draw import z\n",  # the shared layer into a wing
            "ita_segmentation/apps/__init__.py": "",
            "ita_segmentation/apps/draw.py": "from ..training.data import d\n",
            "ita_segmentation/apps/cli.py": "from .draw import z\n",  # a command into its wing: allowed
            "ita_segmentation/training/__init__.py": "",
            "ita_segmentation/training/data.py": "def g():\n    from ..apps.draw import z\n    from .cli import c\n",
            "ita_segmentation/training/cli.py": "import argparse\n",
            "ita_cli.py": "def main():\n    from ita_segmentation.apps.cli import run\n",
        },
    )
    problems = "\n".join(import_graph.violations(import_graph.build_graph(tmp_path)))
    assert "import cycle: ita_segmentation.apps.draw <-> ita_segmentation.training.data" in problems
    assert "modeling_ita.layers (line 3) imports ita_segmentation.training" in problems
    assert "modeling_ita.pixel (line 2) imports modeling_ita.layers inside a function" in problems
    assert "modeling_ita.layers (line 1) imports datasets: not a model-folder dependency" in problems
    assert "image_processing_ita (line 1) imports modeling_ita.layers: the root model files" in problems
    assert (
        "ita_segmentation.files (line 1) imports ita_segmentation.apps.draw: the shared layer imports no wing"
        in problems
    )
    assert "ita_segmentation.training.data (line 3) imports ita_segmentation.training.cli: no wing" in problems
    assert "wings import each other in a circle: apps <-> training" in problems
    assert "ita_cli" not in problems and "apps.cli" not in problems


def _modules_after(statement: str) -> set[str]:
    code = f"import json, sys; {statement}; print(json.dumps(sorted(sys.modules)))"
    completed = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr
    return set(json.loads(completed.stdout.splitlines()[-1]))


def test_import_modeling_ita_loads_no_wing_and_no_heavy_dependency():
    loaded = _modules_after("import modeling_ita")
    assert "modeling_ita.pipeline" in loaded and "torch" in loaded  # the model and its pipeline task are there
    assert not [name for name in loaded if name.split(".")[0] == "ita_segmentation"]
    heavy = [name for name in loaded if name.split(".")[0] in import_graph.HEAVY_DEPENDENCIES]
    assert heavy == []


@pytest.mark.parametrize(
    "module", ["image_processing_ita", "processing_ita", "postprocessing_ita", "configuration_ita"]
)
def test_each_root_model_file_imports_first_without_a_cycle(module):
    """Imported before `modeling_ita` (as a Hub folder's file would be), a root file does not pull the package in."""
    loaded = _modules_after(f"import {module}; import modeling_ita")
    assert not [name for name in loaded if name.split(".")[0] == "ita_segmentation"]
