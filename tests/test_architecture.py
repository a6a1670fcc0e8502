"""The package's import arrows point one way (STYLE.md's first review): no module imports, even lazily inside a
function, a module that imports it back; model/ and data/ stay below training and evaluation; train/ does not reach
up into eval/, predict or the CLIs. The graph is read from the source (`ast`), so imports inside functions count."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import pixelqa

PACKAGE = Path(pixelqa.__file__).parent


def module_name(path: Path, root: Path) -> str:
    """`pixelqa.data.cli` for ROOT/pixelqa/data/cli.py; a package's `__init__` is the package itself."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """{module: modules of the same package it imports}, every `import` / `from ... import` of the file counted,
    at any depth (lazy imports included); `from pkg import mod` points at the module, `from mod import name` at mod."""
    top = package_dir.name
    modules = {module_name(p, package_dir): p for p in package_dir.rglob("*.py")}

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" for a in node.names]
            for t in targets:
                if t == top or t.startswith(top + "."):
                    found = t if t in modules else owner(t)
                    if found and found != mod:
                        graph[mod].add(found)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(PACKAGE)


def test_the_graph_sees_lazy_imports_and_finds_a_planted_cycle(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from pkg.a import thing\n")  # lazy, inside a function
    (pkg / "c.py").write_text("import pkg.a\n")
    g = import_graph(pkg)
    assert g["pkg.a"] == {"pkg.sub.b"} and g["pkg.sub.b"] == {"pkg.a"} and g["pkg.c"] == {"pkg.a"}
    assert cycles(g) == [["pkg.a", "pkg.sub.b"]]
    (pkg / "sub" / "b.py").write_text("def f():\n    return 1\n")
    assert cycles(import_graph(pkg)) == []


def test_no_module_imports_one_that_imports_it_back(graph):
    assert len(graph) > 100  # the whole package was read
    assert cycles(graph) == [], "import cycles (move the shared piece down, let the higher module call the lower)"


def _imports_outside(graph: dict[str, set[str]], layer: str, allowed: tuple[str, ...]) -> list[str]:
    """'module -> target' for modules of `layer` importing pixelqa modules outside `allowed` (prefixes)."""
    return sorted(
        f"{m} -> {t}"
        for m, targets in graph.items()
        if m == layer or m.startswith(layer + ".")
        for t in targets
        if not any(t == a or t.startswith(a + ".") for a in allowed)
    )


@pytest.mark.parametrize(
    "layer, allowed",
    [
        # the network: no data pipeline, no Lightning side, no evaluation
        ("pixelqa.model", ("pixelqa.model", "pixelqa.batch", "pixelqa.prompt_format")),
        # metrics: their own functional cores, plus the sample schema's task names
        ("pixelqa.metrics", ("pixelqa.metrics", "pixelqa.data.schema")),
    ],
)
def test_lower_layers_import_only_what_is_below_them(graph, layer, allowed):
    assert _imports_outside(graph, layer, allowed) == []


def _arrows_up(graph: dict[str, set[str]], layer: str, above: tuple[str, ...], exempt: str = "") -> list[str]:
    """'module -> target' for modules of `layer` (but `exempt`) importing modules of the `above` layers."""
    return sorted(
        f"{m} -> {t}"
        for m, targets in graph.items()
        if m.startswith(layer + ".") and not (exempt and m == exempt)
        for t in targets
        if any(t == a or t.startswith(a + ".") for a in above)
    )


def test_data_does_not_reach_up_into_the_model_training_or_evaluation(graph):
    above = ("pixelqa.model", "pixelqa.train", "pixelqa.eval", "pixelqa.predict", "pixelqa.fit", "pixelqa.evaluate")
    # `python -m pixelqa.data` is an entry point (it may hand a build to the cluster launcher), not a layer
    assert _arrows_up(graph, "pixelqa.data", above, exempt="pixelqa.data.__main__") == []


def test_training_does_not_reach_up_into_evaluation_inference_or_the_commands(graph):
    above = ("pixelqa.eval", "pixelqa.predict", "pixelqa.fit", "pixelqa.evaluate", "pixelqa.grid", "pixelqa.demo")
    assert _arrows_up(graph, "pixelqa.train", above) == []
