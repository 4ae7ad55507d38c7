"""The package's layering, read from its source: no import cycles and no upward imports.

Every `import` counts, at module level or inside a function (a lazy import still ties the two
rooms together). A room is a subpackage (`vqgan_lc.tokenizer`) or a top-level module
(`vqgan_lc.study`). The order below is the one the README's Architecture section explains; a
room may import its own layer or any layer under it, never one above.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import vqgan_lc

# Lowest first.
LAYERS: list[set[str]] = [
    {"_faiss", "files", "config", "distributed", "model_card", "pretrained"},  # foundations
    {"data", "backbones", "train"},        # images and caches, pretrained feature nets, the training loop
    {"quantize"},                          # quantizers over given codebook tensors
    {"codebook"},                          # features -> k-means -> the codebook file
    {"tokenizer"},                         # the VQGAN (reads codebook files)
    {"generate", "evaluate", "classify"},  # what runs on a tokenizer's tokens and latents
    {"study", "demo", "app"},              # experiments and the web page, composed of the above
    {"cli", "__main__"},                   # the command line
]
LAYER_OF = {room: i for i, rooms in enumerate(LAYERS) for room in rooms}


def _modules(root: Path, package: str) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package's __init__)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def import_graph(root: Path, package: str) -> dict[str, dict[str, list[int]]]:
    """module -> {imported module of the same package: [line numbers]}, lazy imports included."""
    modules = _modules(root, package)

    def known(name: str) -> str | None:  # the longest module prefix of `name` that exists
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, dict[str, list[int]]] = {name: {} for name in modules}
    for name, (path, is_package) in modules.items():
        here = name if is_package else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                # `from pkg import sub` imports the submodule pkg.sub where there is one
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            else:
                continue
            for target in targets:
                if target == package or target.startswith(package + "."):
                    resolved = known(target)
                    if resolved and resolved != name:
                        graph[name].setdefault(resolved, []).append(node.lineno)
    return graph


def room_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None  # the package's own __init__ belongs to no room


def cycles(graph: dict[str, set[str] | dict]) -> list[list[str]]:
    """The strongly connected components with more than one member (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph.get(child, ()))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def room_graph(graph: dict[str, dict[str, list[int]]]) -> dict[str, set[str]]:
    rooms: dict[str, set[str]] = {}
    for module, targets in graph.items():
        source = room_of(module)
        if source is None:
            continue
        rooms.setdefault(source, set())
        for target in targets:
            if room_of(target) not in (None, source):
                rooms[source].add(room_of(target))
    return rooms


def upward_imports(graph: dict[str, dict[str, list[int]]]) -> list[str]:
    found = []
    for module, targets in graph.items():
        source = room_of(module)
        for target, lines in targets.items():
            target_room = room_of(target)
            if source and target_room and LAYER_OF[target_room] > LAYER_OF[source]:
                found.append(f"{module}:{lines[0]} imports {target} ({source} -> {target_room}, upward)")
    return found


PACKAGE_ROOT = Path(vqgan_lc.__file__).parent
GRAPH = import_graph(PACKAGE_ROOT, "vqgan_lc")


def test_every_room_has_a_declared_layer():
    rooms = {room_of(module) for module in GRAPH} - {None}
    assert rooms - LAYER_OF.keys() == set(), "place the new room in LAYERS (and the README's Architecture)"
    assert LAYER_OF.keys() - rooms == set(), "LAYERS names a room the package no longer has"


def test_no_module_imports_a_room_above_its_own():
    assert upward_imports(GRAPH) == []


def test_no_import_cycles_between_rooms_or_between_modules():
    assert cycles(room_graph(GRAPH)) == []
    assert cycles({module: set(targets) for module, targets in GRAPH.items()}) == []


@pytest.fixture
def toy_package(tmp_path):
    """A package whose `low` room imports `high` lazily, inside a function, and whose two
    modules in `low` import each other: what the checks above must catch."""
    root = tmp_path / "toy"
    for folder in ("low", "high"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "low" / "a.py").write_text("from .b import thing\n\ndef f():\n    from ..high import top\n")
    (root / "low" / "b.py").write_text("from toy.low import a\nthing = 1\n")
    (root / "high" / "top.py").write_text("import toy.low.b\n")
    return root


def test_the_checks_see_lazy_imports_and_cycles(toy_package, monkeypatch):
    graph = import_graph(toy_package, "toy")
    assert graph["toy.low.a"] == {"toy.low.b": [1], "toy.high.top": [4]}
    assert graph["toy.low.b"] == {"toy.low.a": [1]} and graph["toy.high.top"] == {"toy.low.b": [1]}
    assert cycles({m: set(t) for m, t in graph.items()}) == [["toy.high.top", "toy.low.a", "toy.low.b"]]
    assert cycles(room_graph(graph)) == [["high", "low"]]
    monkeypatch.setitem(LAYER_OF, "low", 0)
    monkeypatch.setitem(LAYER_OF, "high", 1)
    assert upward_imports(graph) == ["toy.low.a:4 imports toy.high.top (low -> high, upward)"]
