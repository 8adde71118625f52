"""The real simulator, reused from the simulator's own tests: one server per test session, reset per test."""

import json
from pathlib import Path

from tests.simulator.conftest import running_simulator, sim  # noqa: F401 (fixtures)

FIXTURES = Path(__file__).with_name("fixtures")


def fixture_json(name: str):
    return json.loads((FIXTURES / name).read_text())
