"""The real simulator, reused from the simulator's own tests: one server per test session, reset per test."""

from tests.simulator.conftest import running_simulator, sim  # noqa: F401 (fixtures)
