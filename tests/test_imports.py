"""The layers import downward only: no import cycle among the modules of ``jlora/`` and ``models/``.

Every import counts, wherever it stands (a function's body, ``if TYPE_CHECKING:``): a late import
that dodges a cycle at run time is still a cycle in the design. Importing ``a.b.c`` also runs the
packages ``a`` and ``a.b`` (unless the importer lives in them, when they run already), so those
count as imported too: that is how ``models`` -> ``jlora.kernels`` would close a cycle through a
``jlora/__init__.py`` that imported the engine. The modules are read as text, not imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("jlora", "models")


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of :data:`PACKAGES`."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph(modules: dict[str, Path]) -> dict[str, dict[str, int]]:
    """Module -> {module it runs by importing: line of the import}, within ``modules``."""

    def known(name: str) -> str | None:  # the module itself, or the package a name is taken from
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [known(a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [known(f"{base}.{a.name}") or known(base) for a in node.names]
            for target in filter(None, targets):
                for runs in [*_ancestors(target), target]:
                    if runs != name and runs not in _ancestors(name) and runs in modules:
                        edges.setdefault(runs, node.lineno)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycle_in_jlora_and_models():
    modules = module_files()
    assert "jlora.engine" in modules and "models.llama" in modules  # the walk found the tree
    graph = import_graph(modules)
    report = []
    for component in cycles(graph):
        report.append(" <-> ".join(component))
        for name in component:
            for target, line in graph[name].items():
                if target in component:
                    report.append(f"    {modules[name].relative_to(ROOT)}:{line} imports {target}")
    assert not report, "import cycles (move the thing to the layer it belongs to):\n" + "\n".join(
        report
    )


def test_models_and_kernels_import_nothing_above_them():
    graph = import_graph(module_files())
    above = [
        f"{name} imports {target}"
        for name, edges in graph.items()
        if name.startswith(("models", "jlora.kernels"))
        for target in edges
        if target.split(".")[0] == "jlora"
        and target not in ("jlora", "jlora.kernels")
        and not target.startswith("jlora.kernels.")
    ]
    assert not above, "\n".join(above)


def test_the_walk_finds_a_cycle_through_a_package(tmp_path):
    # models.llama -> jlora.kernels runs jlora/__init__.py; one that imports the engine (which
    # imports models.llama, inside a function) closes the cycle.
    files = {
        "jlora/__init__.py": "from jlora.engine import Engine\n",
        "jlora/engine.py": "def make():\n    from models.llama import forward\n",
        "jlora/kernels/__init__.py": "",
        "models/__init__.py": "",
        "models/llama.py": "from jlora.kernels import lora\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    modules = {
        n.removesuffix(".py").removesuffix("/__init__").replace("/", "."): tmp_path / n
        for n in files
    }
    assert cycles(import_graph(modules)) == [["jlora", "jlora.engine", "models.llama"]]
    (tmp_path / "jlora/__init__.py").write_text("")
    assert cycles(import_graph(modules)) == []
