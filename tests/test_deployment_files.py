"""docker-compose.yml and .env.example stay in step with the code.

No Docker engine or compose plugin runs here, so this checks what `docker compose
config` would: every service is buildable or has an image, dependencies exist and
are health-checked, and every variable the settings read is documented.
"""

import re

import yaml

from tests.support.processes import REPO

REQUIRED_SERVICES = {"web", "worker", "beat", "redis", "db"}


def load_compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_it_defines_web_worker_beat_redis_and_postgres_with_health_checks():
    services = load_compose()["services"]
    assert REQUIRED_SERVICES <= set(services)
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert "healthcheck" in services[dependency], f"{dependency} has no health check"
    for name in ("web", "worker", "redis", "db"):
        assert "healthcheck" in services[name], name
    assert services["db"]["image"].startswith("postgres")
    assert services["redis"]["image"].startswith("redis")
    assert "/healthz" in " ".join(services["web"]["healthcheck"]["test"])


def test_it_points_the_app_services_at_compose_postgres_and_redis():
    services = load_compose()["services"]
    for name in ("web", "worker", "beat", "migrate"):
        environment = services[name]["environment"]
        assert environment["DATABASE_URL"].startswith("postgres://") and "@db:" in environment["DATABASE_URL"]
        assert environment["REDIS_URL"].startswith("redis://redis:")


def test_it_documents_every_environment_variable_the_settings_read():
    settings_source = (REPO / "ctihub" / "settings.py").read_text()
    read = set(re.findall(r'env\.\w+\("([A-Z_]+)"', settings_source))
    read |= set(re.findall(r'(?:strict_bool|strict_int|_required_in_production)\("([A-Z_]+)"', settings_source))
    read |= set(re.findall(r'env\.db_url\("([A-Z_]+)"', settings_source))
    documented = set(re.findall(r"^([A-Z_]+)=", (REPO / ".env.example").read_text(), flags=re.M))
    assert read, "the pattern found no variables: the test would pass vacuously"
    assert read <= documented, f"undocumented: {sorted(read - documented)}"
