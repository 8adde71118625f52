"""docker-compose.yml, the Dockerfile and .env.example stay in step with the code.

No Docker engine or compose plugin runs here, so this checks what `docker compose
config` would: every service is buildable or has an image, dependencies exist and
are health-checked (or, for `migrate`, run to completion first), variables are
interpolated as compose does (a production stack: DEBUG=false unless told, and no
start without its secrets), the image runs as a non-root user, and every variable
the settings read is documented.
"""

import re

import pytest
import yaml

from tests.support.processes import REPO

REQUIRED_SERVICES = {"web", "worker", "events", "beat", "redis", "db"}


def load_compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_it_defines_web_worker_beat_redis_and_postgres_with_health_checks():
    services = load_compose()["services"]
    assert REQUIRED_SERVICES <= set(services)
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        for dependency, wait in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if wait["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no health check"
            else:
                assert wait["condition"] == "service_completed_successfully", f"{name} -> {dependency}"
                assert services[dependency]["restart"] == "no", f"{dependency} must run once"
    for name in ("web", "worker", "events", "redis", "db"):
        assert "healthcheck" in services[name], name
    assert services["db"]["image"].startswith("postgres")
    assert services["redis"]["image"].startswith("redis")
    assert "/healthz" in " ".join(services["web"]["healthcheck"]["test"])


def test_it_points_the_app_services_at_compose_postgres_and_redis():
    services = load_compose()["services"]
    for name in ("web", "worker", "events", "beat", "migrate"):
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


# --- compose's variable interpolation, as `docker compose config` does it -------------------------

class MissingVariable(Exception):
    pass


_VARIABLE = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\})")


def interpolate(value, env: dict[str, str]):
    """``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``, ``${VAR?error}``, ``$$``."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def replace(match):
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name"), match.group("op"), match.group("arg")
        current = env.get(name)
        unset = current is None or (op is not None and op.startswith(":") and current == "")
        if op and op.endswith("?") and unset:
            raise MissingVariable(f"{name}: {arg}")
        if op and op.endswith("-") and unset:
            return arg
        return current or ""

    return _VARIABLE.sub(replace, value)


def app_environment(env: dict[str, str]) -> dict[str, dict[str, str]]:
    services = load_compose()["services"]
    return {name: interpolate(services[name]["environment"], env) for name in ("web", "worker", "beat", "migrate")}


SECRETS = {"SECRET_KEY": "s" * 50, "FIELD_ENCRYPTION_KEY": "Xm2pG1bJ1c5E9Ezn0U6l1ZQ3w3V8n5b2t9h0y8k4r6E="}


@pytest.mark.parametrize("missing", ["SECRET_KEY", "FIELD_ENCRYPTION_KEY"])
def test_it_refuses_to_start_the_stack_without_its_secrets(missing):
    for env in ({k: v for k, v in SECRETS.items() if k != missing}, {**SECRETS, missing: ""}):
        with pytest.raises(MissingVariable, match=f"^{missing}: set {missing} in .env"):
            app_environment(env)


def test_it_runs_the_stack_with_debug_off_unless_told_otherwise():
    for name, environment in app_environment(SECRETS).items():
        assert environment["DEBUG"] == "false", name
        assert environment["SECRET_KEY"] == SECRETS["SECRET_KEY"], name
    assert {e["DEBUG"] for e in app_environment({**SECRETS, "DEBUG": "true"}).values()} == {"true"}


def test_it_starts_web_worker_and_beat_only_once_migrate_has_completed():
    services = load_compose()["services"]
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["command"][-2:] == ["migrate", "--noinput"]
    for name in ("web", "worker", "beat"):
        depends_on = services[name]["depends_on"]
        assert depends_on["migrate"] == {"condition": "service_completed_successfully"}, name
        assert depends_on["db"]["condition"] == depends_on["redis"]["condition"] == "service_healthy", name


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def test_it_builds_an_image_that_runs_as_an_unprivileged_user():
    instructions = dockerfile_instructions()
    users = [(i, argument.strip()) for i, (keyword, argument) in enumerate(instructions) if keyword == "USER"]
    assert users, "the image runs as root"
    last_user_at, user = users[-1]
    assert user.split(":")[0] not in ("root", "0"), user
    assert not [k for k, _ in instructions[last_user_at:] if k == "RUN"], "RUN after USER: it would need root"
    created = " ".join(argument for keyword, argument in instructions if keyword == "RUN")
    assert re.search(rf"(useradd|adduser)\b[^&]*\b{re.escape(user.split(':')[0])}\b", created), created
    assert instructions[-1][0] == "CMD"
