"""The package's shape, checked from its source: no import cycles between kitchen's modules.

The graph is read with ``ast`` from every ``kitchen/**/*.py`` file, counting imports
inside functions (a lazy import still ties two modules together: each one needs the
other to be importable and initialised), and leaving out only imports under
``if TYPE_CHECKING:``, which never run. A cycle is reported with the modules on it, so
the fix (moving the shared piece to the lower module) is plain from the message.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from conftest import REPO

ROOT = REPO
PKG = ROOT / "kitchen"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, here: str, is_pkg: bool):
    """Yield the absolute names each import statement in ``tree`` asks for, TYPE_CHECKING blocks skipped."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg_parts = here.split(".") if is_pkg else here.split(".")[:-1]
                pkg_parts = pkg_parts[: len(pkg_parts) - (node.level - 1)]
                base = ".".join(pkg_parts + ([base] if base else []))
            for alias in node.names:
                yield base, alias.name
        stack.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, set[str]]:
    mods = all_modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for base, member in _imports(tree, name, path.name == "__init__.py"):
            if not (base == "kitchen" or base.startswith("kitchen.")):
                continue
            target = f"{base}.{member}" if member and f"{base}.{member}" in mods else base
            while target not in mods and "." in target:  # kitchen.x.y where y is a name in x
                target = target.rsplit(".", 1)[0]
            if target in mods and target != name:
                graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    sys.setrecursionlimit(10000)

    def strong(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def describe(comp: list[str], graph: dict[str, set[str]]) -> str:
    members = set(comp)
    edges = [f"    {a} -> {b}" for a in comp for b in sorted(graph[a]) if b in members]
    return "  cycle of " + ", ".join(comp) + ":\n" + "\n".join(edges)


def test_no_import_cycles_between_kitchen_modules():
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import cycles (lazy imports count; TYPE_CHECKING ones do not):\n" + "\n".join(
        describe(c, graph) for c in found)


if __name__ == "__main__":  # `python tests/integration/test_architecture.py` lists the cycles
    g = import_graph()
    for c in cycles(g):
        print(describe(c, g))


def _map_block() -> str:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    start = text.index("```\nkitchen/\n")
    return text[start: text.index("```", start + 3)]


def test_the_architecture_map_names_every_package_and_module():
    """docs/architecture.md's map must name each package (``name/``) and each module file.

    A module is named by its file stem (``atomic.py`` or ``atomic``) anywhere in the map's
    code block; ``__init__``/``__main__`` of a package are covered by the package's line.
    """
    block = _map_block()
    missing = []
    for path in sorted(PKG.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        rel = path.relative_to(PKG)
        for folder in rel.parts[:-1]:
            if f"{folder}/" not in block:
                missing.append(f"kitchen/{'/'.join(rel.parts[:rel.parts.index(folder) + 1])}/")
        if path.stem in ("__init__", "__main__") and len(rel.parts) > 1:
            continue
        if path.stem not in block:
            missing.append(f"kitchen/{rel.as_posix()}")
    assert not missing, "docs/architecture.md's map lacks: " + ", ".join(sorted(set(missing)))


def test_no_source_file_is_hidden_by_gitignore():
    """A module that .gitignore hides runs here and is missing from every clone (a pattern
    like `runs/` once swallowed kitchen/runs/*.py written after the package moved)."""
    import shutil
    import subprocess

    import pytest

    root = REPO
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(
        ["git", "ls-files", "--others", "--ignored", "--exclude-standard", "--", "kitchen", "tests",
         "benchmarks", "examples", "docs", "conf", "recipes"],
        cwd=root, capture_output=True, text=True, check=True).stdout.split()
    hidden = [p for p in listed if p.endswith((".py", ".yaml", ".md", ".toml")) and "/.ruff_cache/" not in p]
    assert not hidden, f"ignored by .gitignore, so missing from clones: {hidden}"
