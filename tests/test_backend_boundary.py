"""The backend seam holds: only ``tfsynapse/backends/`` imports a Keras or tfmot.

Read from the source (every import statement, nested ones included), so a new import that
crosses the boundary fails here whether or not a test runs it.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("tfsynapse", "tflite_export")
FORBIDDEN = ("tf_keras", "keras", "tensorflow_model_optimization")
# Packages that must not even pick one backend: they see the interface of tfsynapse.backends.
NEUTRAL = ("tfsynapse/graph", "tfsynapse/criteria", "tfsynapse/surgery",
           "tfsynapse/plan/planner.py", "tfsynapse/plan/scoring.py")
BACKEND_MODULES = ("tfsynapse.backends.tf_keras", "tfsynapse.backends.keras3")


def _sources():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield path.relative_to(ROOT).as_posix(), path


def _imported_modules(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            for alias in node.names:  # `from tfsynapse.backends import tf_keras`
                yield node.lineno, f"{node.module}.{alias.name}"
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant)):
            yield node.lineno, str(node.args[0].value)


def _crossings(rule):
    found = []
    for name, path in _sources():
        for line, module in _imported_modules(path):
            if rule(name, module):
                found.append(f"{name}:{line} imports {module}")
    return found


def test_only_the_backends_import_a_keras_or_tfmot():
    def crosses(name, module):
        root = module.split(".")[0]
        return root in FORBIDDEN and not name.startswith("tfsynapse/backends/")

    assert _crossings(crosses) == []


def test_backend_neutral_packages_use_only_the_seam():
    def crosses(name, module):
        neutral = any(name == p or name.startswith(p + "/") for p in NEUTRAL)
        return neutral and any(module == b or module.startswith(b + ".") for b in BACKEND_MODULES)

    assert _crossings(crosses) == []


@pytest.mark.parametrize("source", ["import keras\n", "from tf_keras import layers\n",
                                    "def f():\n    import tensorflow_model_optimization\n"])
def test_the_check_sees_every_kind_of_import(tmp_path, source):
    path = tmp_path / "probe.py"
    path.write_text(source)
    assert [m.split(".")[0] for _, m in _imported_modules(path)][0] in FORBIDDEN


def _name_branches(path):
    """Comparisons with a backend's name (``backend.NAME == "keras3"``, ``... != "tf_keras"``)."""
    names = {"tf_keras", "keras3"}
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            sides = [node.left] + list(node.comparators)
            if any(isinstance(s, ast.Constant) and s.value in names for s in sides):
                found.append(node.lineno)
    return found


def test_no_code_outside_the_backends_branches_on_a_backend_name():
    """Everything outside ``backends/`` calls the interface (``backends/base.py``)."""
    found = [f"{name}:{line}" for name, path in _sources()
             if not name.startswith("tfsynapse/backends/") for line in _name_branches(path)]
    assert found == []


def test_the_name_branch_check_fires(tmp_path):
    path = tmp_path / "probe.py"
    path.write_text("if backend.NAME == 'keras3':\n    pass\nok = name != 'tf_keras'\n")
    assert _name_branches(path) == [1, 3]
