"""The project's import graph, read from the source, and the rules of its layout.

Every import statement of every project module is an edge, those inside functions included (they run as
surely as the ones at the top, only later). The modules fall into four layers:

- the **model folder**: `configuration_ita`, `image_processing_ita`, `postprocessing_ita`, `processing_ita`
  and the `modeling_ita` package: what a Hub model repository holds and what transformers would merge;
- the **shared layer**: the modules directly in `ita_segmentation/` (model-file handling, vocabulary files,
  label maps, synthetic scenes), which several wings use;
- the **wings**: the packages of `ita_segmentation/` (apps, evaluation, training, hub, onnx);
- the **commands**: `ita_cli`, `app`, `ita_segmentation.__main__` and each wing's `cli` module.

`python tools/import_graph.py` prints the graph (module -> modules it imports), the layer of each module and
every broken rule; `--dot` prints it for Graphviz. `tests/test_import_graph.py` asserts that no rule is broken.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MODEL_ROOT_MODULES = ("configuration_ita", "image_processing_ita", "postprocessing_ita", "processing_ita")
MODEL_PACKAGE = "modeling_ita"
TOOLS_PACKAGE = "ita_segmentation"
COMMAND_MODULES = ("ita_cli", "app", f"{TOOLS_PACKAGE}.__main__")
# What the model folder may import besides itself and the standard library: torch, transformers, open_clip,
# timm and the libraries they are built on (scipy for the loss's Hungarian matching, as transformers' own
# Mask2Former).
MODEL_FOLDER_THIRD_PARTY = (
    "huggingface_hub",
    "numpy",
    "open_clip",
    "PIL",
    "safetensors",
    "scipy",
    "timm",
    "torch",
    "torchvision",
    "transformers",
)
# Neither `import modeling_ita` nor any model-folder module may load these (checked at run time by the test).
HEAVY_DEPENDENCIES = ("datasets", "evaluate", "onnx", "onnxruntime", "onnxscript", "gradio", "torchmetrics")


@dataclass(frozen=True)
class Import:
    """One import statement: the module it names, its line, and whether it runs when the module is loaded."""

    target: str
    line: int
    at_top: bool


@dataclass
class ImportGraph:
    """Project modules, their files, and the project modules each imports."""

    root: Path = ROOT
    files: dict[str, Path] = field(default_factory=dict)
    imports: dict[str, list[Import]] = field(default_factory=dict)
    external: dict[str, list[Import]] = field(default_factory=dict)

    def edges(self) -> dict[str, set[str]]:
        return {module: {item.target for item in items} for module, items in self.imports.items()}


def project_files(root: Path = ROOT) -> dict[str, Path]:
    """Module name -> file, for the project's importable modules (tests, benchmarks, scripts and tools aside)."""
    files = {name: root / f"{name}.py" for name in (*MODEL_ROOT_MODULES, "ita_cli", "app")}
    for package in (MODEL_PACKAGE, TOOLS_PACKAGE):
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            files[".".join(parts)] = path
    return {name: path for name, path in files.items() if path.is_file()}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _project_target(name: str, modules: Iterable[str]) -> str | None:
    """The project module an imported name belongs to (the longest module prefix), or None."""
    known = set(modules)
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return None


def _top_level_nodes(tree: ast.Module) -> set[int]:
    """ids of the import nodes that run when the module is imported (outside any function or class body)."""
    found: set[int] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.add(id(node))
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                for block in ("body", "orelse", "finalbody", "handlers"):
                    children = getattr(node, block, [])
                    for child in children:
                        visit(child.body if isinstance(child, ast.ExceptHandler) else [child])

    visit(tree.body)
    return found


def build_graph(root: Path = ROOT) -> ImportGraph:
    graph = ImportGraph(root=root, files=project_files(root))
    for module, path in graph.files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        top = _top_level_nodes(tree)
        is_package = path.name == "__init__.py"
        found: list[Import] = []
        external: list[Import] = []
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, is_package, node)
                # `from package import submodule` imports the submodule; `from module import name` the module.
                names = [f"{base}.{alias.name}" if base else alias.name for alias in node.names]
            else:
                continue
            for name in names:
                target = _project_target(name, graph.files)
                item = Import(target or name.split(".")[0], node.lineno, id(node) in top)
                if target is None:
                    external.append(item)
                elif target != module:
                    found.append(item)
        graph.imports[module] = found
        graph.external[module] = external
    return graph


def layer(module: str, root: Path = ROOT) -> str:
    """model, shared, wing, or command."""
    if module in COMMAND_MODULES or module.endswith(".cli"):
        return "command"
    if module in MODEL_ROOT_MODULES or module == MODEL_PACKAGE or module.startswith(f"{MODEL_PACKAGE}."):
        return "model"
    parts = module.split(".")
    if parts[0] == TOOLS_PACKAGE and (len(parts) == 1 or (len(parts) == 2 and not _is_wing(parts[1], root))):
        return "shared"
    return "wing"


def _is_wing(name: str, root: Path) -> bool:
    return (root / TOOLS_PACKAGE / name).is_dir()


def wing(module: str, root: Path = ROOT) -> str | None:
    """The wing a module belongs to (`apps`, `evaluation`, ...), or None outside the wings."""
    parts = module.split(".")
    if parts[0] == TOOLS_PACKAGE and len(parts) >= 2 and _is_wing(parts[1], root):
        return parts[1]
    return None


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def connect(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(edges.get(node, ())):
            if successor not in index:
                connect(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(edges):
        if node not in index:
            connect(node)
    return found


def _standard_library() -> frozenset[str]:
    return frozenset(sys.stdlib_module_names) | {"__future__"}


def violations(graph: ImportGraph) -> list[str]:
    """Every broken rule of the layout, one line each (empty when the house is in order)."""
    problems: list[str] = []
    edges = graph.edges()
    for component in cycles(edges):
        problems.append(f"import cycle: {' <-> '.join(component)}")
    wing_edges: dict[str, set[str]] = {}
    for module, items in graph.imports.items():
        source_layer = layer(module, graph.root)
        for item in items:
            where = f"{module} (line {item.line}) imports {item.target}"
            target_layer = layer(item.target, graph.root)
            if source_layer == "model":
                if target_layer != "model":
                    problems.append(f"{where}: the model folder imports only itself")
                elif not item.at_top:
                    problems.append(f"{where} inside a function: the model folder imports at the top of the file")
                elif module in MODEL_ROOT_MODULES and item.target.split(".")[0] == MODEL_PACKAGE:
                    problems.append(f"{where}: the root model files import only each other (modeling_ita imports them)")
            if source_layer in ("shared", "wing") and target_layer == "command":
                problems.append(f"{where}: no wing or shared module imports a command")
            if source_layer == "shared" and target_layer == "wing":
                problems.append(f"{where}: the shared layer imports no wing")
            source_wing, target_wing = wing(module, graph.root), wing(item.target, graph.root)
            if source_wing and target_wing and source_wing != target_wing and source_layer != "command":
                wing_edges.setdefault(source_wing, set()).add(target_wing)
    for component in cycles(wing_edges):
        problems.append(f"wings import each other in a circle: {' <-> '.join(component)}")
    allowed = _standard_library() | set(MODEL_FOLDER_THIRD_PARTY)
    for module, items in graph.external.items():
        if layer(module, graph.root) != "model":
            continue
        for item in items:
            if item.target not in allowed:
                problems.append(f"{module} (line {item.line}) imports {item.target}: not a model-folder dependency")
    return problems


def _dot(graph: ImportGraph) -> str:
    lines = ["digraph imports {", "  rankdir=LR;"]
    for module in sorted(graph.files):
        lines.append(f'  "{module}" [label="{module}\\n({layer(module, graph.root)})"];')
    for module, targets in sorted(graph.edges().items()):
        lines += [f'  "{module}" -> "{target}";' for target in sorted(targets)]
    lines.append("}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dot", action="store_true", help="print the graph in Graphviz's dot language")
    args = parser.parse_args(argv)
    graph = build_graph()
    if args.dot:
        print(_dot(graph))
        return 0
    for module in sorted(graph.files):
        targets = ", ".join(sorted(graph.edges()[module])) or "-"
        print(f"{module} [{layer(module, graph.root)}] -> {targets}")
    problems = violations(graph)
    print(f"\n{len(problems)} broken rule(s)" + (":" if problems else ""))
    for problem in problems:
        print(f"- {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
