"""The documentation site's cheap checks: the API reference covers every public name, the
nav lists every page, the copied figures match the benchmarks'. None of them builds the
site (`mkdocs build --strict` does, in `.ci/run`)."""

from __future__ import annotations

import filecmp
import importlib
import inspect
import pathlib
import re
import types

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
API = DOCS / "api"
# The public packages a reader imports by name; everything public below them is found by
# walking their `__all__` (`import mcobjectives` leaves the experimental package out).
PUBLIC_ROOTS = ("mcobjectives", "mcobjectives.experimental.mnist")
FIGURES = DOCS / "benchmarks" / "figures"


def _public_modules() -> dict[str, types.ModuleType]:
    """Every public module, by name: the roots and each module named in a public `__all__`."""
    found: dict[str, types.ModuleType] = {}
    pending = [importlib.import_module(name) for name in PUBLIC_ROOTS]
    while pending:
        module = pending.pop()
        if module.__name__ in found:
            continue
        found[module.__name__] = module
        for name in module.__all__:
            value = getattr(module, name)
            if isinstance(value, types.ModuleType) and value.__name__.startswith("mcobjectives"):
                pending.append(value)
    return found


def _api_identifiers() -> list[str]:
    """The identifiers of the `::: identifier` directives of the API reference pages."""
    pages = sorted(API.glob("*.md"))
    assert pages, f"no API reference pages in {API}"
    return [
        match.group(1)
        for page in pages
        for match in re.finditer(r"^:::\s+([\w.]+)\s*$", page.read_text(), re.MULTILINE)
    ]


def _resolve(identifier: str) -> object:
    """The object a dotted identifier names: the longest importable module prefix, then
    attributes (as griffe resolves it through the re-exports)."""
    parts = identifier.split(".")
    for split in range(len(parts), 0, -1):
        try:
            value = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            value = getattr(value, attribute)
        return value
    raise ImportError(identifier)


def _is_named_object(value: object) -> bool:
    """Classes, functions and modules are compared by identity; constants (ints, strings,
    tuples) by their spelling, since equal constants may be one object."""
    return inspect.isclass(value) or inspect.isroutine(value) or isinstance(value, types.ModuleType)


def test_every_api_directive_names_an_importable_object():
    """A `:::` identifier that does not import would fail the docs build; say which here."""
    missing = []
    for identifier in _api_identifiers():
        try:
            _resolve(identifier)
        except (ImportError, AttributeError) as error:
            missing.append(f"{identifier}: {error!r}")
    assert not missing, "API pages name objects that do not exist:\n" + "\n".join(missing)


def test_every_public_name_is_in_the_api_reference():
    """Every name in every public `__all__` (recursively) has a `:::` entry: under its own
    spelling, or, for a class or function exported twice, under another public spelling."""
    identifiers = set(_api_identifiers())
    documented = set()
    for identifier in identifiers:
        try:
            value = _resolve(identifier)
        except (ImportError, AttributeError):
            continue
        if _is_named_object(value):
            documented.add(id(value))
    modules = _public_modules()
    assert "mcobjectives.weights" in modules and "mcobjectives.experimental.mnist" in modules
    missing = []
    for module_name, module in sorted(modules.items()):
        if module_name not in identifiers:
            missing.append(f"{module_name} (the module itself: its page's `::: {module_name}`)")
        for name in module.__all__:
            value = getattr(module, name)
            spelled = f"{module_name}.{name}" in identifiers
            if not spelled and not (_is_named_object(value) and id(value) in documented):
                missing.append(f"{module_name}.{name}")
    assert not missing, (
        "public names missing from the API reference (add `::: name` to a page under "
        "docs/api/):\n" + "\n".join(missing)
    )


def test_every_api_directive_renders_the_object_python_imports():
    """mkdocstrings reads the source with griffe, not the import system: where a package
    holds a submodule and a re-exported function of the same name, griffe takes the module
    while Python gives the function. Each identifier must be the same kind for both."""
    griffe = pytest.importorskip("griffe")
    package = griffe.load("mcobjectives", search_paths=[str(ROOT)], resolve_aliases=False)
    mismatched = []
    for identifier in _api_identifiers():
        try:
            value = _resolve(identifier)
        except (ImportError, AttributeError):
            continue  # test_every_api_directive_names_an_importable_object reports it
        found = package[identifier.removeprefix("mcobjectives.")] if "." in identifier else package
        found = found.final_target if found.is_alias else found
        if found.is_module != isinstance(value, types.ModuleType):
            mismatched.append(f"{identifier}: griffe reads {found.path} ({found.kind.value})")
    assert not mismatched, "API entries griffe renders as another object:\n" + "\n".join(mismatched)


def _nav_files(entries) -> list[str]:
    files = []
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        files.extend(_nav_files(value) if isinstance(value, list) else [value])
    return files


def _site_config() -> dict:
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())


def test_every_docs_page_is_in_the_nav_and_every_nav_entry_exists():
    """The nav of mkdocs.yml and the pages under docs/ are the same set."""
    nav = _nav_files(_site_config()["nav"])
    assert len(nav) == len(set(nav)), f"pages listed twice in the nav: {nav}"
    pages = {
        path.relative_to(DOCS).as_posix()
        for path in DOCS.rglob("*")
        if path.suffix in (".md", ".ipynb") and ".ipynb_checkpoints" not in path.parts
    }
    no_file = sorted(set(nav) - pages)
    assert not no_file, f"nav entries without a file under docs/: {no_file}"
    not_listed = sorted(pages - set(nav))
    assert not not_listed, f"pages under docs/ missing from mkdocs.yml's nav: {not_listed}"


def test_every_api_module_page_is_in_the_nav():
    """Each API page is reachable from the API reference section."""
    (api_section,) = [
        entry["API reference"] for entry in _site_config()["nav"] if "API reference" in entry
    ]
    listed = set(_nav_files(api_section))
    pages = {f"api/{page.name}" for page in API.glob("*.md")}
    assert listed == pages, f"only in the nav: {listed - pages}; only in docs/api: {pages - listed}"


@pytest.mark.parametrize(
    "figure", sorted(p.relative_to(FIGURES).as_posix() for p in FIGURES.rglob("*.png"))
)
def test_docs_figures_are_the_benchmarks_figures(figure):
    """A figure copied under docs/benchmarks/figures/ is byte-identical with the one the
    benchmark drew (`cp benchmarks/results/<name>/<figure> docs/benchmarks/figures/<name>/`
    after a rerun)."""
    source = ROOT / "benchmarks" / "results" / figure
    assert source.exists(), f"{figure} is not a figure under benchmarks/results/"
    assert filecmp.cmp(source, FIGURES / figure, shallow=False), f"{figure} is stale"


def test_no_hand_kept_test_counts_in_the_docs():
    """Counts of tests go stale with the next test; the docs name the files instead."""
    pattern = re.compile(r"\b\d+\s+(?:tests|passed|test cases)\b", re.IGNORECASE)
    texts = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *DOCS.rglob("*.md")]
    found = [
        f"{path.relative_to(ROOT)}: {match.group(0)!r}"
        for path in texts
        for match in pattern.finditer(path.read_text())
    ]
    assert not found, "hand-kept test counts:\n" + "\n".join(found)
