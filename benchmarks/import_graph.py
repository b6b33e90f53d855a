"""The import graph of the `resnet_jax` package: its layers, and every circle or upward import.

    python -m benchmarks.import_graph            # this checkout's package
    python -m benchmarks.import_graph --root=DIR  # another checkout's (DIR holds resnet_jax/)

Each folder of the package is a layer, and a module may import only its own layer and those below it; the package's
top-level modules are the commands, above every layer. Imports inside functions count as much as those at the top.
Prints the layers with their modules' imports, then the circles and the upward imports (none, in a healthy tree);
tests/test_import_graph.py asserts the same.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

PACKAGE = "resnet_jax"
LAYERS = ("core", "kernels", "data", "models", "interop", "pretrained", "recipe", "run", "eval", "train")
"""Bottom to top; top-level modules (`main`, `evaluate`, ...) are the commands, above them all."""
COMMANDS = len(LAYERS)


def modules(root: Path) -> dict[str, Path]:
    """Dotted name -> file of every module of the package under `root` (a package's own is its __init__.py)."""
    found = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(root: Path) -> dict[str, set[str]]:
    """Each module's imports of the package's modules (the longest dotted name that is a module)."""
    known = modules(root)
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                candidates = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
            else:
                continue
            for candidate in candidates:
                if candidate.split(".")[0] != PACKAGE:
                    continue
                while candidate not in known:
                    candidate = candidate.rsplit(".", 1)[0]
                targets.add(candidate)
        # `from resnet_jax.x import y` names both x and x.y: keep the most specific.
        graph[name] = {t for t in targets - {name} if not any(o.startswith(t + ".") for o in targets)}
    return graph


def layer(module: str) -> int:
    """The rank of a module's layer: its folder's place in LAYERS, COMMANDS for the top-level modules."""
    parts = module.split(".")
    if len(parts) == 1:
        return -1  # the package's own __init__: below everything
    if parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    return COMMANDS


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def upward(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Every import of a module in a higher layer than the importer's."""
    return sorted((a, b) for a, targets in graph.items() for b in targets if layer(b) > layer(a))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[1]), help="folder holding resnet_jax/")
    root = Path(parser.parse_args().root)
    graph = imports(root)
    names = (*LAYERS, "commands")
    for rank in range(-1, COMMANDS + 1):
        members = sorted(m for m in graph if layer(m) == rank)
        if members:
            print(f"## {names[rank] if rank >= 0 else PACKAGE}")
            for module in members:
                print(f"  {module.removeprefix(PACKAGE + '.')} -> {', '.join(sorted(graph[module])) or '-'}")
    found, up = circles(graph), upward(graph)
    print(f"circles: {len(found)}")
    for component in found:
        print("  " + " <-> ".join(component))
    print(f"upward imports: {len(up)}")
    for a, b in up:
        print(f"  {a} -> {b}")


if __name__ == "__main__":
    main()
