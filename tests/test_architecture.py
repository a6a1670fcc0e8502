"""How the package is written, checked from its source (`ast`): the import arrows point one way (STYLE.md's first
review): no module imports, even lazily inside a function, a module that imports it back (imports for annotations
only, under `if TYPE_CHECKING:`, are not arrows); model/ and data/ stay below training and evaluation; train/ does not
reach up into eval/, predict or the CLIs. And every public function has a typed signature and a docstring."""

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


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of `tree` but those under `if TYPE_CHECKING:` (imports for annotations only, never executed)."""
    out: list[ast.AST] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        out.append(node)
        for child in ast.iter_child_nodes(node):
            test = getattr(child, "test", None) if isinstance(child, ast.If) else None
            if test is not None and "TYPE_CHECKING" in ast.unparse(test):
                stack.extend(child.orelse)
                continue
            stack.append(child)
    return out


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """{module: modules of the same package it imports}, every `import` / `from ... import` of the file counted,
    at any depth (lazy imports included) but annotation-only ones (`if TYPE_CHECKING:`); `from pkg import mod` points
    at the module, `from mod import name` at mod."""
    top = package_dir.name
    modules = {module_name(p, package_dir): p for p in package_dir.rglob("*.py")}

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        for node in _runtime_nodes(ast.parse(path.read_text(), filename=str(path))):
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
    (pkg / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.c import C\n")
    g = import_graph(pkg)
    assert g["pkg.a"] == {"pkg.sub.b"} and g["pkg.sub.b"] == {"pkg.a"} and g["pkg.c"] == {"pkg.a"}
    assert g["pkg.d"] == set()  # annotations only
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
        (
            "pixelqa.model",
            ("pixelqa.model", "pixelqa.batch", "pixelqa.prompt_format", "pixelqa.files", "pixelqa.switches"),
        ),
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


def untyped_public_functions(package_dir: Path) -> list[str]:
    """'file:line name: what is missing' for public module functions and methods of public classes (nested helpers
    aside) without a docstring, a return annotation or an annotation on every parameter."""
    found: list[str] = []

    def visit(body: list[ast.stmt], path: Path, prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                visit(node.body, path, f"{prefix}{node.name}.")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
                a = node.args
                params = [p for p in a.posonlyargs + a.args + a.kwonlyargs if p.arg not in ("self", "cls")]
                params += [p for p in (a.vararg, a.kwarg) if p is not None]
                missing = [p.arg for p in params if p.annotation is None]
                missing += ["return"] if node.returns is None else []
                missing += ["docstring"] if not ast.get_docstring(node) else []
                if missing:
                    found.append(f"{path.name}:{node.lineno} {prefix}{node.name}: {', '.join(missing)}")

    for path in sorted(package_dir.rglob("*.py")):
        visit(ast.parse(path.read_text(), filename=str(path)).body, path, "")
    return found


def test_public_functions_have_typed_signatures_and_docstrings(tmp_path):
    assert untyped_public_functions(PACKAGE) == []
    (tmp_path / "m.py").write_text(
        'class A:\n    def f(self, x: int) -> int:\n        """Doc."""\n        return x\n\n'
        "    def g(self, y):\n        return y\n\n\n"
        'def h(*args: int) -> None:\n    """Doc."""\n\n'
        "    def inner(z):  # nested helpers are not public API\n        pass\n"
    )
    assert untyped_public_functions(tmp_path) == ["m.py:6 A.g: y, return, docstring"]
