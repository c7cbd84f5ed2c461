"""The package's layout, read statically: what may import what, and how large a piece may be.

No TensorFlow is imported: every module's imports are read from its source with `ast`.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "mcobjectives"
MODULES = sorted(PACKAGE.rglob("*.py"))
# Where Keras may be imported: the adapter, the layers, and the MNIST model builders.
KERAS_PACKAGES = ("keras", "networks", "experimental")
MAX_MODULE_LINES = 450
MAX_CLASS_LINES = 310  # "about 300", docstring included


def _name(path: pathlib.Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)


def _imports(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _ids(paths):
    return [_name(p) for p in paths]


@pytest.mark.parametrize("path", MODULES, ids=_ids(MODULES))
def test_private_tfp_and_keras_names_are_reached_only_through_compat(path):
    if path.name == "_compat.py":
        return
    private = sorted(
        n for n in _imports(path) if n.startswith(("tensorflow_probability.python", "keras.src"))
    )
    assert not private, f"{_name(path)} imports {private}: add them to mcobjectives/_compat.py"


@pytest.mark.parametrize("path", MODULES, ids=_ids(MODULES))
def test_keras_is_imported_only_by_the_adapter_the_layers_and_the_mnist_builders(path):
    top = path.relative_to(PACKAGE).parts[0]
    if top in KERAS_PACKAGES or path.name == "_compat.py":
        return
    assert not any(n == "keras" or n.startswith("keras.") for n in _imports(path)), _name(path)


@pytest.mark.parametrize("name", ["checks", "validation"])
def test_the_bottom_layer_imports_nothing_of_the_library_but_compat(name):
    own = {n for n in _imports(PACKAGE / "core" / f"{name}.py") if n.startswith("mcobjectives")}
    assert own <= {"mcobjectives", "mcobjectives._compat"}, own


@pytest.mark.parametrize("path", MODULES, ids=_ids(MODULES))
def test_no_private_name_is_imported_from_another_module_of_the_library(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mcobjectives"):
            private = [a.name for a in node.names if a.name.startswith("_")]
            private = [n for n in private if n not in ("_compat", "__version__")]
            assert not private, f"{_name(path)} imports {private} from {node.module}"


@pytest.mark.parametrize("path", MODULES, ids=_ids(MODULES))
def test_no_module_is_over_450_lines_and_no_class_over_about_300(path):
    source = path.read_text()
    lines = source.count("\n")
    print(f"{_name(path)}: {lines} lines")
    assert lines <= MAX_MODULE_LINES, f"{_name(path)} has {lines} lines"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            size = node.end_lineno - node.lineno + 1
            assert size <= MAX_CLASS_LINES, f"{_name(path)}.{node.name} has {size} lines"


@pytest.mark.parametrize("path", MODULES, ids=_ids(MODULES))
def test_no_private_name_of_another_library_module_is_read_as_an_attribute(path):
    tree = ast.parse(path.read_text())
    modules = set()  # local names bound to modules of the library
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mcobjectives"):
            for alias in node.names:
                if (PACKAGE.parent / f"{node.module}.{alias.name}".replace(".", "/")).exists() or (
                    PACKAGE.parent / (f"{node.module}.{alias.name}".replace(".", "/") + ".py")
                ).exists():
                    modules.add(alias.asname or alias.name)
    modules.discard("_compat")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and node.attr.startswith("_")
        ):
            raise AssertionError(f"{_name(path)}:{node.lineno} reads {node.value.id}.{node.attr}")
