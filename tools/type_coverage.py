"""The share of the project's public functions that are fully typed: every parameter (but `self` / `cls`) and
the return annotated. Public: a module-level function or a method whose name does not start with `_` (dunder
methods other than `__init__` and `__call__` aside), in a class whose name does not start with `_`.

`python tools/type_coverage.py [--list]` prints the share per file and overall (`--list`: the untyped ones).
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from import_graph import ROOT, project_files  # noqa: E402


def _is_typed(function: ast.FunctionDef | ast.AsyncFunctionDef, method: bool) -> bool:
    arguments = function.args
    positional = [*arguments.posonlyargs, *arguments.args]
    if (
        method
        and positional
        and not any(
            isinstance(decorator, ast.Name) and decorator.id == "staticmethod" for decorator in function.decorator_list
        )
    ):
        positional = positional[1:]
    parameters = [*positional, *arguments.kwonlyargs]
    parameters += [argument for argument in (arguments.vararg, arguments.kwarg) if argument is not None]
    if any(parameter.annotation is None for parameter in parameters):
        return False
    return function.returns is not None or function.name == "__init__"


def _is_public(name: str) -> bool:
    return not name.startswith("_") or name in ("__init__", "__call__")


def public_functions(path: Path) -> list[tuple[str, bool]]:
    """(qualified name, fully typed) for each public function of one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[str, bool]] = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _is_public(node.name):
            found.append((node.name, _is_typed(node, method=False)))
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and _is_public(item.name):
                    found.append((f"{node.name}.{item.name}", _is_typed(item, method=True)))
    return found


def coverage(root: Path = ROOT) -> tuple[int, int, dict[str, list[tuple[str, bool]]]]:
    """(typed, total, per-module functions) over the project's modules."""
    per_module = {module: public_functions(path) for module, path in sorted(project_files(root).items())}
    functions = [typed for items in per_module.values() for _, typed in items]
    return sum(functions), len(functions), per_module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="name every public function that is not fully typed")
    args = parser.parse_args(argv)
    typed, total, per_module = coverage()
    for module, items in per_module.items():
        if items:
            print(f"{module}: {sum(t for _, t in items)}/{len(items)}")
            if args.list:
                print("".join(f"    untyped: {name}\n" for name, is_typed in items if not is_typed), end="")
    print(f"\n{typed} of {total} public functions fully typed ({100 * typed / max(total, 1):.0f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
