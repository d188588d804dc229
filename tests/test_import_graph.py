"""The packages flow one way: no package imports one above it, so there is no import cycle
between packages, and the function-level imports of the project's own modules are the listed
ones, each with its reason.

Read from the source (every import statement, nested ones included), so a new import that
breaks the flow fails here whether or not a test runs it.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
OWN = ("tfsynapse", "tflite_export")

# Bottom to top (docs/architecture.md): a package may import only packages on earlier lines.
LAYERS = (
    ("tfsynapse.fileio", "tfsynapse.keras3_hook"),
    ("tfsynapse.backends",),
    ("tfsynapse.datasets", "tfsynapse.models", "tfsynapse.quiet", "tfsynapse.graph"),
    ("tfsynapse.criteria",),
    ("tfsynapse.layers",),
    ("tfsynapse.plan",),
    ("tfsynapse.analysis",),
    ("tfsynapse.pruning",),
    ("tfsynapse.surgery",),
    ("tflite_export",),
    ("tfsynapse.budget",),
    ("tfsynapse",),  # the public facade (``import tfsynapse``): names from every package
    ("tfsynapse.cli",),
    ("tfsynapse.__main__",),  # ``python -m tfsynapse``
)
RANK = {package: rank for rank, names in enumerate(LAYERS) for package in names}

# Function-level imports of the project's own modules that stay, with their reasons. Anything
# else is imported at the top of its module.
_CLI = "the command starts without TensorFlow: each subcommand imports what it needs"
_TF_LATE = "loading data or quieting logs must not import TensorFlow before it is needed"
FUNCTION_LEVEL = {
    ("tfsynapse.cli.budget", "tfsynapse.cli.args"): _CLI,
    ("tfsynapse.cli.budget", "tfsynapse"): _CLI,
    ("tfsynapse.cli.budget", "tfsynapse.budget.device_latency"): _CLI,
    ("tfsynapse.cli.command", "tfsynapse"): _CLI,
    ("tfsynapse.cli.command", "tfsynapse.criteria.registry"): _CLI,
    ("tfsynapse.cli.command", "tfsynapse.cli.finetune"): _CLI,
    ("tfsynapse.cli.command", "tflite_export"): _CLI,
    ("tfsynapse.cli.command", "tfsynapse.quiet"): _CLI,
    ("tfsynapse.cli.files", "tfsynapse"): _CLI,
    ("tfsynapse.cli.files", "tfsynapse.backends"): _CLI,
    ("tfsynapse.datasets", "tfsynapse.backends.tf_keras"): _TF_LATE,
    ("tfsynapse.quiet", "tfsynapse.backends.tf_keras"): _TF_LATE,
    ("tflite_export.conversion_job", "tflite_export.float_layers"):
        "the conversion worker process imports only what its conversion needs",
    ("tflite_export.conversion_job", "tflite_export.keras_io"):
        "the conversion worker process imports only what its conversion needs",
    ("tflite_export.conversion_job", "tflite_export.ranges"):
        "the conversion worker process imports only what its conversion needs",
    ("tflite_export.conversion_job", "tflite_export._runtime"):
        "the conversion worker process imports only what its conversion needs",
    ("tflite_export.float_layers", "tflite_export.keras_io"):
        "inside one package: keras_io imports float_layers' marker helpers",
    ("tflite_export.converter", "tflite_export.layer_errors"):
        "inside one package: layer_errors converts through converter (float_layers='auto')",
}


def _module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _exists(module):
    base = ROOT.joinpath(*module.split("."))
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def _resolve(module, name):
    """The module ``from module import name`` reaches: a submodule, or ``module`` itself."""
    return f"{module}.{name}" if _exists(f"{module}.{name}") else module


def imports(path):
    """``(line, imported module, in a function)`` for each import of the project's modules."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nested = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            nested.update(id(n) for n in ast.walk(fn) if n is not fn)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [_resolve(node.module, alias.name) for alias in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] in OWN:
                found.append((node.lineno, target, id(node) in nested))
    return found


def package_of(module):
    """The package of ``module`` in ``LAYERS`` (``tfsynapse.budget.search`` -> ``tfsynapse.budget``)."""
    parts = module.split(".")
    for size in (2, 1):
        if ".".join(parts[:size]) in RANK:
            return ".".join(parts[:size])
    raise KeyError(f"{module} belongs to no package of LAYERS: add its package there.")


def _edges(paths):
    for path in paths:
        module = _module_name(path)
        for line, target, in_function in imports(path):
            yield module, line, target, in_function


def _sources():
    return [p for package in OWN for p in sorted((ROOT / package).rglob("*.py"))]


def upward_imports(edges):
    """Imports of a package from a package above it (or of the same rank)."""
    bad = []
    for module, line, target, _ in edges:
        source, destination = package_of(module), package_of(target)
        if source != destination and RANK[destination] >= RANK[source]:
            bad.append(f"{module}:{line} imports {target} ({destination} is not below {source})")
    return bad


def package_cycles(edges):
    """Cycles in the package graph (each as a list of packages), found by depth-first search."""
    graph = {}
    for module, _, target, _ in edges:
        source, destination = package_of(module), package_of(target)
        if source != destination:
            graph.setdefault(source, set()).add(destination)
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return cycles


def test_every_package_imports_only_packages_below_it():
    assert upward_imports(list(_edges(_sources()))) == []


def test_there_is_no_import_cycle_between_packages():
    assert package_cycles(list(_edges(_sources()))) == []


def test_function_level_imports_are_the_listed_ones_with_their_reasons():
    found = {(module, target) for module, _, target, in_function in _edges(_sources())
             if in_function}
    assert sorted(found - set(FUNCTION_LEVEL)) == [], "import these at the top of the module"
    assert sorted(set(FUNCTION_LEVEL) - found) == [], "gone: remove them from FUNCTION_LEVEL"


def test_the_checks_fire_on_an_upward_import_and_a_cycle():
    edges = [("tfsynapse.graph.walk", 3, "tfsynapse.pruning.api", False),
             ("tfsynapse.pruning.api", 5, "tfsynapse.graph", False)]
    assert upward_imports(edges) == [
        "tfsynapse.graph.walk:3 imports tfsynapse.pruning.api "
        "(tfsynapse.pruning is not below tfsynapse.graph)"]
    assert package_cycles(edges) == [["tfsynapse.graph", "tfsynapse.pruning", "tfsynapse.graph"]]


@pytest.mark.parametrize("source, expected", [
    ("from tfsynapse.budget import measured\n", [(1, "tfsynapse.budget.measured", False)]),
    ("from tfsynapse.graph import count_macs\n", [(1, "tfsynapse.graph", False)]),
    ("def f():\n    import tflite_export\n", [(2, "tflite_export", True)]),
    ("import numpy\n", []),
])
def test_imports_are_read_with_their_module_and_place(tmp_path, source, expected):
    path = tmp_path / "probe.py"
    path.write_text(source)
    assert imports(path) == expected
