"""The package's layout rules, checked on its source: they keep the architecture
readable from the file list (docs/architecture.md).

* no import cycles between our modules, counting imports inside functions;
* no module imports another's underscore names;
* no production module imports ``django.test`` (it would load Django's test
  machinery into every worker);
* exactly one ``setting_changed`` receiver, in ``runtime``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from django.core.signals import setting_changed

import replica_router

PACKAGE = Path(replica_router.__file__).parent
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


def our_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PRODUCTION}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for module, names in imports(path):
            if module == "replica_router":  # ``from replica_router import runtime``
                edges |= {f"replica_router.{n}" for n in names} & modules.keys()
            elif module in modules:
                edges.add(module)
        graph[name] = edges - {name}
    return graph


def test_there_are_no_import_cycles():
    graph = our_graph()
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
        env={"DJANGO_SETTINGS_MODULE": "tests.settings", "PATH": "/usr/bin:/bin"},
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
