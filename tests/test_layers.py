"""The apps' layers hold: no module imports an app above its own (docs/architecture.md).

From the top: the project's wiring (``ctihub``), ``crm_sync``, ``telephony`` (with its providers),
``accounts``. The core offers plug-in points (``telephony.plugins``, ``accounts.signals``) that the apps
above it use from their ``AppConfig.ready()``; an import the other way is what this test fails on,
whether at the top of a module or inside a function. Test modules may import upwards (an integration
test of a provider with the CRM side), so they are not read.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support.processes import REPO

# app -> the apps above it, which none of its modules may import.
MAY_NOT_IMPORT = {
    "accounts": ("telephony", "crm_sync"),
    "telephony": ("crm_sync",),
}


def product_modules(app: str) -> list[Path]:
    """The app's modules but its tests (a ``tests`` package, or ``tests.py``/``test_*.py``)."""
    return sorted(
        path for path in (REPO / app).rglob("*.py")
        if "tests" not in path.relative_to(REPO).parts[:-1]
        and path.name != "tests.py" and not path.name.startswith("test_")
    )


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, module) of every import in the source, wherever it is (module level, functions, branches).

    A relative import is resolved against ``module``; ``from a import b`` counts as importing ``a.b``
    (``b`` may be a module)."""
    found = []
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names if alias.name != "*"]
    return found


def suite_modules_of(app: str) -> list[Path]:
    return sorted(set((REPO / app).rglob("*.py")) - set(product_modules(app)))


def forbidden_imports(app: str, modules=product_modules) -> list[str]:
    above = MAY_NOT_IMPORT[app]
    bad: dict[str, str] = {}
    for path in modules(app):
        module = module_name(path)
        for line, name in imported_modules(path.read_text(), module, path.name == "__init__.py"):
            where = f"{path.relative_to(REPO)}:{line}"
            if name.split(".")[0] in above and len(name) < len(bad.get(where, name + ".")):
                bad[where] = name  # ``from a import b``: say ``a``
    return sorted(f"{where} imports {name}" for where, name in bad.items())


@pytest.mark.parametrize("app", sorted(MAY_NOT_IMPORT))
def test_it_finds_no_import_of_an_app_above_in_the_apps_modules(app):
    assert product_modules(app), f"no module found for {app}"
    assert forbidden_imports(app) == []


@pytest.mark.parametrize("app", sorted(MAY_NOT_IMPORT))
def test_it_finds_no_import_of_an_app_above_in_the_apps_tests_either(app):
    # A lower layer's tests exercise it through its own hooks (telephony.plugins); what needs the layer
    # above is that layer's test (crm_sync/tests/test_enduser_*.py).
    assert suite_modules_of(app), f"no test module found for {app}"
    assert forbidden_imports(app, suite_modules_of) == []


def test_it_reads_the_providers_as_telephony_modules():
    modules = {module_name(path) for path in product_modules("telephony")}
    assert "telephony.providers.istra_enduser.callerid" in modules
    assert not any(".tests" in module or module.split(".")[-1].startswith("test_") for module in modules)


def test_it_catches_an_import_inside_a_function_and_a_relative_one():
    source = (
        "import os\n"
        "def hand_off():\n"
        "    from crm_sync.domain import calls_changed\n"
        "    if True:\n"
        "        import crm_sync.tasks as tasks\n"
        "from .. import cards\n"
        "from . import plugins\n"
    )
    found = imported_modules(source, "telephony.providers.kind")
    assert (3, "crm_sync.domain") in found and (3, "crm_sync.domain.calls_changed") in found
    assert (5, "crm_sync.tasks") in found
    assert (6, "telephony.cards") in found
    assert (7, "telephony.providers.plugins") in found
