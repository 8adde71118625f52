from django.apps import AppConfig


class SimulatorConfig(AppConfig):
    """The development tools as a Django app: ``runall`` (./scripts/run: the whole hub on embedded defaults,
    the simulator and the demo) and ``ensure_demo_admin``. Installed only where the simulator is (a
    checkout); the image leaves it out (.dockerignore), so production has neither the commands nor the code."""

    name = "simulator"
    verbose_name = "Simulator and demo (development)"
