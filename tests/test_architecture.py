"""The package's layers, read from its import statements: every module under unbottle/ is parsed with `ast`, and every
`import unbottle…` / `from unbottle… import` / relative import is an edge, wherever it sits (imports inside functions
count: they run too). `from PKG import NAME` is an edge to PKG.NAME when that is a module, else to PKG. Imports under
`if TYPE_CHECKING:` count for the layers but not for cycles (they never run).

Layers, top to bottom (a module may import its own layer and the layers listed for it, never one above):

    entry      unbottle.cli, unbottle.bench, unbottle.__main__         → everything below
    features   unbottle.attention_processors (not .kernels), .pipelines, .guidance, .rewards, .batch, .defaults
                                                                       → shapes, families, kernels, utility
    shapes     unbottle.shapes: the embedded models' world, captions, evaluator and model definitions, read by the
               rewards (shapes-clip, shapes-retrieval) and by defaults                → utility
    testing    unbottle.testing: tiny offline fixtures for tests; only entry points (the benchmarks build on its tiny
               pipelines) may import it, no feature does                              → utility
    families   unbottle.families: one record per model family, no math              → kernels, utility
    kernels    unbottle.attention_processors.kernels: Triton kernels                  → utility
    utility    unbottle.errors, .tokenizers, .version, .compat: no unbottle import but each other

The package root (unbottle/__init__.py) is the public API: it re-exports from every layer, and no module imports it.
Import cycles between modules are refused too (a package and its own submodules included).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "unbottle"

# layer → module prefixes (the longest matching prefix decides)
LAYERS: dict[str, tuple[str, ...]] = {
    "entry": ("unbottle.cli", "unbottle.bench", "unbottle.__main__"),
    "features": (
        "unbottle.attention_processors",
        "unbottle.pipelines",
        "unbottle.guidance",
        "unbottle.rewards",
        "unbottle.batch",
        "unbottle.defaults",
    ),
    "shapes": ("unbottle.shapes",),
    "testing": ("unbottle.testing",),
    "families": ("unbottle.families",),
    "kernels": ("unbottle.attention_processors.kernels",),
    "utility": ("unbottle.errors", "unbottle.tokenizers", "unbottle.version", "unbottle.compat"),
}
MAY_IMPORT: dict[str, set[str]] = {
    "entry": {"entry", "features", "shapes", "testing", "families", "kernels", "utility"},
    "features": {"features", "shapes", "families", "kernels", "utility"},
    "shapes": {"shapes", "utility"},
    "testing": {"testing", "utility"},
    "families": {"families", "kernels", "utility"},
    "kernels": {"kernels", "utility"},
    "utility": {"utility"},
}
ROOT = "unbottle"


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name → (file, is a package __init__), for every .py file under unbottle/."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(module: str, path: Path, is_package: bool) -> tuple[dict[str, int], dict[str, int]]:
    """unbottle modules that `module` imports → the first line importing each: (all imports, those that run)."""
    found: dict[str, int] = {}
    running: dict[str, int] = {}
    package = module.split(".") if is_package else module.split(".")[:-1]

    def add(target: str, line: int, typing_only: bool) -> None:
        if target == ROOT or target.startswith(ROOT + "."):
            found.setdefault(target, line)
            if not typing_only:
                running.setdefault(target, line)

    def visit(node: ast.AST, typing_only: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno, typing_only)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                add(sub if sub in MODULES else target, node.lineno, typing_only)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, typing_only)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, typing_only)

    visit(ast.parse(path.read_text(), str(path)), False)
    return found, running


_PARSED = {m: _imports(m, path, pkg) for m, (path, pkg) in MODULES.items()}
GRAPH: dict[str, dict[str, int]] = {m: found for m, (found, _) in _PARSED.items()}
RUNTIME_GRAPH: dict[str, dict[str, int]] = {m: running for m, (_, running) in _PARSED.items()}


def _where(module: str, line: int) -> str:
    return f"{MODULES[module][0].relative_to(PACKAGE.parent)}:{line}"


def layer_of(module: str) -> str | None:
    """The layer of a module (the longest matching prefix), None for the root and unclassified modules."""
    best, length = None, -1
    for layer, prefixes in LAYERS.items():
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > length:
                best, length = layer, len(prefix)
    return best


def test_the_graph_reads_relative_absolute_and_function_level_imports():
    """The reader resolves the import forms the package uses (checked on modules whose imports are known)."""
    cli = GRAPH["unbottle.cli"]
    assert "unbottle.cli.bottleneck" in cli  # `from .bottleneck import ...` at module level
    assert "unbottle.cli.output" in cli  # `from .output import ...` inside _run
    kernels = GRAPH["unbottle.attention_processors.kernels.block_sparse_fwd"]
    assert "unbottle.attention_processors.kernels.common" in kernels
    assert GRAPH["unbottle.__main__"] == {"unbottle.cli": GRAPH["unbottle.__main__"]["unbottle.cli"]}


def test_the_reader_on_a_module_of_known_imports(tmp_path):
    """Root, relative, absolute, function-level and type-checking-only imports, each where it is expected."""
    source = tmp_path / "probe.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "import unbottle\n"
        "from . import errors\n"
        "from .cli import options\n"
        "if TYPE_CHECKING:\n"
        "    from .families import Family\n"
        "def f():\n"
        "    import unbottle.tokenizers\n"
        "    from .. import version\n"
    )
    found, running = _imports("unbottle.probe", source, False)
    assert found == {"unbottle": 2, "unbottle.errors": 3, "unbottle.cli.options": 4, "unbottle.families": 6,
                     "unbottle.tokenizers": 8}  # fmt: skip
    assert "unbottle.families" not in running and set(running) == set(found) - {"unbottle.families"}
    nested, _ = _imports("unbottle.pipelines.probe", source, False)
    # one level down, `from .. import version` is the module unbottle.version; `from . import errors` is a name of
    # the package unbottle.pipelines (it has no errors module)
    assert nested["unbottle.version"] == 9 and nested["unbottle.pipelines"] == 3


def test_every_module_has_a_layer():
    """A new top-level module or package needs a decision: which layer it joins (LAYERS above)."""
    missing = sorted(m for m in MODULES if m != ROOT and layer_of(m) is None)
    assert not missing, "modules in no layer (add them to LAYERS): " + ", ".join(missing)


def test_every_import_names_a_module_that_exists():
    """Relative imports resolve to real modules, function-level ones too (a lazy `from ..x import y` one level off
    fails only when its branch runs, e.g. on a GPU)."""
    missing = [f"{_where(m, line)}: {m} imports {t}" for m, targets in GRAPH.items() for t, line in targets.items()
               if t != ROOT and t not in MODULES]  # fmt: skip
    assert not missing, "imports of modules that do not exist:\n" + "\n".join(sorted(missing))


def test_no_module_imports_the_package_root():
    """`import unbottle`, `from unbottle import X`, `from .. import __version__` inside the package: none."""
    offenders = [f"{_where(m, line)} ({m})" for m, targets in GRAPH.items() for t, line in targets.items()
                 if t == ROOT and m != ROOT]  # fmt: skip
    assert not offenders, "the package root imported from inside the package:\n" + "\n".join(sorted(offenders))


def test_layers_import_only_downwards():
    """cli/bench → features → (shapes, families) → kernels → utility; testing only from the entry points."""
    offenders = []
    for module, targets in GRAPH.items():
        here = layer_of(module)
        if here is None:
            continue
        for target, line in targets.items():
            there = layer_of(target)
            if there is not None and there not in MAY_IMPORT[here]:
                offenders.append(f"{_where(module, line)}: {module} ({here}) imports {target} ({there})")
    assert not offenders, "imports against the layer order:\n" + "\n".join(sorted(offenders))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module, or with a self-edge (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
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
                if len(component) > 1 or node in graph.get(node, ()):
                    components.append(sorted(component))
    return components


def test_cycle_finder_finds_a_known_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}, "f": set()}
    assert sorted(_cycles(graph)) == [["a", "b", "c"], ["e"]]


def test_no_import_cycles():
    """No set of modules imports each other around a loop (the root, which only re-exports, is left out)."""
    graph = {m: {t for t in targets if t in MODULES and t != ROOT}
             for m, targets in RUNTIME_GRAPH.items() if m != ROOT}  # fmt: skip
    cycles = _cycles(graph)
    lines = []
    for component in cycles:
        members = set(component)
        edges = [f"    {_where(m, line)}: {m} → {t}" for m in component
                 for t, line in RUNTIME_GRAPH[m].items() if t in members]  # fmt: skip
        lines.append(" ↔ ".join(component) + "\n" + "\n".join(sorted(edges)))
    assert not cycles, f"{len(cycles)} import cycle(s):\n" + "\n".join(lines)


@pytest.mark.parametrize("module", ["unbottle.shapes.clip", "unbottle.shapes.retrieval"])
def test_shipped_models_do_not_import_testing(module):
    """The embedded models' tokenizers come from unbottle.tokenizers, not from the test fixtures."""
    assert not [t for t in GRAPH[module] if layer_of(t) == "testing"]
