"""The package's parts import one another in one direction only: no cycle between pgraft's
subpackages and top-level modules (read from the source, so an import inside a function counts)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pgraft"


def part(module: str) -> str:
    """The part of pgraft a module belongs to: pgraft.engine.rounds -> engine, pgraft.buffer -> buffer."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "pgraft"


def imports(path: Path) -> set[str]:
    here = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = here if path.name == "__init__.py" else here.rsplit(".", 1)[0]
    package = package.removesuffix(".__init__")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            names = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
            found.update(names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pgraft":
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "pgraft")
    return found


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        src = part(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
        for target in imports(path):
            dst = part(target)
            if dst not in (src, "pgraft", "_C"):
                edges.setdefault(src, set()).add(dst)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every simple cycle's node list, found by depth-first search (the graph has ~20 nodes)."""
    found, seen = [], set()

    def walk(node: str, path: list[str]) -> None:
        for nxt in sorted(edges.get(node, ())):
            if nxt == path[0]:
                key = frozenset(path)
                if key not in seen:
                    seen.add(key)
                    found.append([*path, nxt])
            elif nxt not in path and nxt > path[0]:
                walk(nxt, [*path, nxt])

    for start in sorted(edges):
        walk(start, [start])
    return found


def test_no_import_cycle_between_the_parts_of_pgraft():
    assert not cycles(graph()), cycles(graph())


def test_the_cycle_finder_finds_a_planted_cycle():
    planted = {**graph(), "kernels": graph().get("kernels", set()) | {"experiments"}}
    assert any("kernels" in c and "experiments" in c for c in cycles(planted))
