"""A PBX provider is its folder and one INSTALLED_APPS line: no product module outside the folder names it.

Each provider (``telephony/providers/<kind>/``, a Django app) registers what it brings with
``telephony.providers.registry`` from its ``AppConfig.ready()``; the core and the wiring read the
registry (docs/architecture.md, "Where a new PBX goes"). This test reads every product module (not the
tests, not the migrations) and fails on one outside a provider's folder that imports it, names its
modules in a string, or names its kind as ``PbxAccount.Kind.<NAME>``. ``telephony/providers/istra/`` is
what the three Istra providers share: only they import it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from django.apps import apps
from django.conf import settings

from telephony.providers import registry
from tests.support.processes import REPO
from tests.test_layers import imported_modules, module_name, product_modules

PROVIDERS_DIR = REPO / "telephony" / "providers"
PROVIDERS = sorted(path.parent.name for path in PROVIDERS_DIR.glob("*/apps.py"))
ISTRA_PROVIDERS = ("istra_enduser", "istra_mycrm", "istra_myrcc")
#: Every provider has these (a docstring saying so where it has nothing of the kind).
SAME_FILES = ("__init__.py", "apps.py", "admin.py", "transport.py", "frames.py", "tasks.py", "urls.py", "views.py",
              "tests/__init__.py")

# (module, what it names): the exceptions, each with its reason.
ALLOWED = {
    # A myCrm socket cannot tell which calls ended while it was down: the End User account with the same
    # login (its call history) ends them, after each reconnect; the admin says which account that is.
    ("telephony.providers.istra_mycrm.transport", "istra_enduser"),
    ("telephony.providers.istra_mycrm.admin", "istra_enduser"),
    # ... and that End User account's history is matched against the calls of the socket kinds of the
    # same Istra login (myCrm, myRCC): the Istra family shares a server and its users.
    ("telephony.providers.istra_enduser.backfill", "istra_mycrm"),
    ("telephony.providers.istra_enduser.backfill", "istra_myrcc"),
    ("telephony.providers.istra_enduser.tasks", "istra_mycrm"),
}


def owner(module: str) -> str | None:
    """The provider whose folder holds ``module``, else None."""
    parts = module.split(".")
    if parts[:2] == ["telephony", "providers"] and len(parts) > 2 and parts[2] in PROVIDERS:
        return parts[2]
    return None


def named_providers(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, provider) for each provider (or the shared ``istra`` package) the source names."""
    found = []
    for line, target in imported_modules(source, module, is_package):
        parts = target.split(".")
        if parts[:2] == ["telephony", "providers"] and len(parts) > 2 and parts[2] in (*PROVIDERS, "istra"):
            found.append((line, parts[2]))
    tree = ast.parse(source)
    docstrings = {
        id(node.body[0].value) for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }
    kind_names = {kind.upper(): kind for kind in PROVIDERS}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            for provider in (*PROVIDERS, "istra"):
                if re.search(rf"providers[./]{provider}(?![A-Za-z0-9_])", node.value):
                    found.append((node.lineno, provider))
        elif isinstance(node, ast.Attribute) and node.attr in kind_names:
            if isinstance(node.value, ast.Attribute) and node.value.attr == "Kind":
                found.append((node.lineno, kind_names[node.attr]))
    return sorted(set(found))


def violations(path: Path) -> list[str]:
    module = module_name(path)
    here = owner(module)
    found = []
    for line, provider in named_providers(path.read_text(), module, path.name == "__init__.py"):
        if provider == here or (module, provider) in ALLOWED:
            continue
        if provider == "istra" and (here in ISTRA_PROVIDERS or module.startswith("telephony.providers.istra.")):
            continue
        found.append(f"{path.relative_to(REPO)}:{line} names {provider}")
    return found


def test_it_finds_no_module_outside_a_providers_folder_that_names_it():
    modules = [
        path for app in ("accounts", "telephony", "crm_sync", "ctihub") for path in product_modules(app)
        if "migrations" not in path.parts and path != REPO / "ctihub" / "settings.py"
    ]
    assert len(modules) > 100
    found = [line for path in modules for line in violations(path)]
    assert found == []


def test_it_tells_an_import_a_string_and_a_kind_name_of_a_provider_from_the_rest():
    source = (
        '"""Mentions telephony.providers.telepo.views in prose: fine."""\n'
        "from telephony.providers.telepo import views\n"
        "from telephony.providers import registry\n"
        "TASK = 'telephony.providers.istra_myrcc.tasks.pull_lines_task'\n"
        "KIND = PbxAccount.Kind.ISTRA_MYCRM\n"
        "from telephony.providers.istra.session import IstraSession\n"
    )
    assert named_providers(source, "telephony.control") == [
        (2, "telepo"), (4, "istra_myrcc"), (5, "istra_mycrm"), (6, "istra"),
    ]


def test_it_names_each_provider_in_the_settings_only_as_an_installed_app():
    named = [line for line, _ in named_providers((REPO / "ctihub" / "settings.py").read_text(), "ctihub.settings")]
    source_lines = (REPO / "ctihub" / "settings.py").read_text().splitlines()
    assert sorted(source_lines[line - 1].strip() for line in named) == sorted(
        f'"telephony.providers.{kind}",' for kind in PROVIDERS
    )


def test_it_has_every_installed_provider_registered_with_its_own_class():
    assert sorted(registry.kinds()) == PROVIDERS
    for kind in PROVIDERS:
        assert apps.get_app_config(kind).name == f"telephony.providers.{kind}"
        assert registry.provider_class(kind).kind == kind
        assert registry.provider_class(kind).__module__ == f"telephony.providers.{kind}.transport"


def test_it_gives_every_provider_the_same_files():
    for kind in PROVIDERS:
        missing = [name for name in SAME_FILES if not (PROVIDERS_DIR / kind / name).is_file()]
        assert missing == [], kind


def test_it_schedules_each_providers_beat_entries_under_their_names():
    for kind in PROVIDERS:
        for name, entry in registry.get(kind).beat.items():
            assert settings.CELERY_BEAT_SCHEDULE[name] == entry
            assert entry["task"].startswith(f"telephony.providers.{kind}.tasks.")
    assert {"telepo-reconcile", "enduser-backfill"} <= set(settings.CELERY_BEAT_SCHEDULE)


def test_it_mounts_each_providers_urls_under_its_prefix():
    from django.urls import reverse

    assert reverse("telepo-webhook", args=["s"]) == f"/{registry.get('telepo').url_prefix}webhook/s"
    assert reverse("enduser-voicemails") == f"/{registry.get('istra_enduser').url_prefix}voicemails/"


def test_it_finds_what_each_provider_declares_it_can_do_registered():
    from telephony import plugins
    from telephony.providers.base import Provider

    audio = {owner(type(source).__module__) for source in plugins.audio_sources()}
    for kind in PROVIDERS:
        declared = registry.capabilities(kind)
        assert (kind in audio) == declared.audio, kind
        assert (kind in plugins._caller_id_presenters) == declared.caller_id, kind
        # A provider shared by threads builds its shared state once, up front (registry.cached_provider).
        shares = registry.provider_class(kind).prepare_shared is not Provider.prepare_shared
        assert shares == declared.parallel_requests, kind
