"""The layout rules, checked on the source: they keep the architecture readable
from the file list (docs/architecture.md).

* no import cycles between our modules (the package's, and ``testbed``'s),
  counting imports inside functions;
* no module imports another's underscore names;
* no production module imports ``django.test`` (it would load Django's test
  machinery into every worker);
* exactly one ``setting_changed`` receiver, in ``runtime``;
* the repository's rooms: ``bench/`` and ``testbed/`` (the Django project that
  the tests and the benchmarks run against) never import ``tests``, and the top
  of ``tests/`` holds test packages only (helpers go in ``tests/support``).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.signals import setting_changed

import replica_router

PACKAGE = Path(replica_router.__file__).parent
ROOT = PACKAGE.parent
# The cluster tool and pytest plugin are test tooling by design.
PRODUCTION = sorted(p for p in PACKAGE.rglob("*.py") if "testing" not in p.parts)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) for every import in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def our_graph(paths: list[Path]) -> dict[str, set[str]]:
    modules = {module_name(p): p for p in paths}
    top = module_name(paths[0]).split(".")[0]
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for module, names in imports(path):
            # ``from replica_router import runtime``, ``from .postgresql import pools``
            submodules = {f"{module}.{n}" for n in names} & modules.keys()
            edges |= submodules
            if module in modules and (module != top or not submodules):
                edges.add(module)
        graph[name] = edges - {name}
    return graph


@pytest.mark.parametrize(
    "paths",
    [PRODUCTION, sorted((ROOT / "testbed").rglob("*.py"))],
    ids=["replica_router", "testbed"],
)
def test_there_are_no_import_cycles(paths: list[Path]):
    graph = our_graph(paths)
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = path[path.index(module) :] + [module]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        for target in sorted(graph.get(module, ())):
            visit(target, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_no_module_imports_another_modules_private_names():
    private = [
        f"{path.relative_to(PACKAGE)}: from {module} import {name}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for module, names in imports(path)
        if module.startswith("replica_router")
        for name in names
        if name.startswith("_")
    ]
    assert private == []


def test_no_production_module_imports_django_test():
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PRODUCTION
        for module, _ in imports(path)
        if module == "django.test" or module.startswith("django.test.")
    ]
    assert offenders == []


def test_a_running_site_does_not_load_djangos_test_machinery():
    # The debug-toolbar panel is for development, and the toolbar itself
    # imports django.test (its settings follow override_settings).
    unloaded = {"replica_router.metrics", "replica_router.contrib.debug_toolbar"}
    modules = " ".join(sorted({module_name(p) for p in PRODUCTION} - unloaded))
    code = (
        "import django, importlib, sys; django.setup(); "
        f"[importlib.import_module(m) for m in {modules.split()!r}]; "
        "print(sorted(m for m in sys.modules if m.startswith('django.test')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"DJANGO_SETTINGS_MODULE": "testbed.settings", "PATH": "/usr/bin:/bin"},
        cwd=PACKAGE.parent,
    )
    assert out.stdout.strip() == "[]", out.stdout


def test_one_setting_changed_receiver_resets_everything():
    ours = [
        key
        for key, *_ in setting_changed.receivers
        if isinstance(key[0], str) and key[0].startswith("replica_router")
    ]
    assert [key[0] for key in ours] == ["replica_router.runtime.reset"]


def mentions_of_tests(path: Path) -> list[str]:
    """The imports of ``tests`` in the file, and the strings that name a module of
    it (a ``DJANGO_SETTINGS_MODULE``, a ``ROOT_URLCONF``, a ``celery -A``)."""
    tree = ast.parse(path.read_text())
    found = [
        f"import {module}"
        for module, _ in imports(path)
        if module == "tests" or module.startswith("tests.")
    ]
    found += [
        repr(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and re.fullmatch(r"tests(\.\w+)+(:\w+)?", node.value)
    ]
    return found


@pytest.mark.parametrize("room", ["bench", "testbed"])
def test_bench_and_testbed_never_import_tests(room: str):
    files = sorted((ROOT / room).rglob("*.py"))
    assert files, f"no {room}/ next to the package"
    offenders = [
        f"{path.relative_to(ROOT)}: {mention}"
        for path in files
        for mention in mentions_of_tests(path)
    ]
    assert offenders == []


def test_the_top_of_tests_holds_test_packages_only():
    # Shared harnesses are in testbed/, helpers only tests use in tests/support/.
    modules = sorted(path.name for path in (ROOT / "tests").glob("*.py"))
    assert modules == ["__init__.py", "conftest.py"]


def test_no_module_is_over_450_lines():
    """A module that long holds more than one concept: split it."""
    long = {
        str(path.relative_to(ROOT)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > 450
    }
    assert long == {}
