"""Password guessing is throttled on both login pages, by user name and by address (django-axes).

Sixty wrong passwords in a row on /login/ and on /admin/login/ all got 200, then the right one logged
in. Now the LOGIN_FAILURE_LIMIT-th failure for one user name (from any address) or from one address
(for any user names) locks that name or address: it is refused, right password included, with a page
(429) that says why and for how long, until LOGIN_LOCKOUT_MINUTES pass without a new try.
"""

from __future__ import annotations

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import SESSION_KEY, get_user_model
from django.test import Client

from tests.factories import make_agent

pytestmark = pytest.mark.django_db

PAGES = ["/login/", "/admin/login/"]
PASSWORD = "right-pass-123"


@pytest.fixture
def users(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # a fast hash: many tries
    agent = make_agent("carol")
    agent.user.set_password(PASSWORD)
    agent.user.save()
    get_user_model().objects.create_superuser("boss", password=PASSWORD)
    get_user_model().objects.create_user("dave", password=PASSWORD)
    return {"/login/": "carol", "/admin/login/": "boss"}


def attempt(client: Client, page: str, username: str, password: str, address: str):
    return client.post(page, {"username": username, "password": password}, REMOTE_ADDR=address)


def logged_in(client: Client) -> bool:
    return SESSION_KEY in client.session


def test_it_is_on_with_a_limit_and_a_lockout_time_by_default():
    assert django_settings.LOGIN_FAILURE_LIMIT == 10 and django_settings.LOGIN_LOCKOUT_MINUTES == 15
    assert "axes" in django_settings.INSTALLED_APPS
    assert django_settings.AUTHENTICATION_BACKENDS[0] == "accounts.throttle.LoginThrottleBackend"


@pytest.mark.parametrize("page", PAGES)
def test_it_locks_a_user_name_out_after_repeated_failures_from_any_addresses(users, page):
    username, client = users[page], Client()
    for n in range(60):
        response = attempt(client, page, username, f"guess-{n}", address=f"10.0.{n // 250}.{n % 250 + 1}")
        assert response.status_code == (200 if n < django_settings.LOGIN_FAILURE_LIMIT - 1 else 429), n
    response = attempt(client, page, username, PASSWORD, address="192.0.2.50")  # right password, fresh address
    assert response.status_code == 429 and not logged_in(client)
    text = response.content.decode()
    assert "Too many login attempts" in text and "Try again in 15 minutes" in text
    assert "too many failed attempts for this user name" in text
    # Another user from one of those addresses is not affected by the name's lockout.
    assert attempt(Client(), "/login/", "dave", PASSWORD, address="10.0.0.1").status_code == 302


@pytest.mark.parametrize("page", PAGES)
def test_it_locks_an_address_out_after_failures_for_any_user_names(users, page):
    client = Client()
    for n in range(django_settings.LOGIN_FAILURE_LIMIT - 1):
        assert attempt(client, page, f"nobody{n}", "guess", address="198.51.100.7").status_code == 200
    assert attempt(client, page, "nobody-last", "guess", address="198.51.100.7").status_code == 429
    response = attempt(client, page, users[page], PASSWORD, address="198.51.100.7")
    assert response.status_code == 429 and "Too many login attempts" in response.content.decode()
    assert not logged_in(client)
    # The same user from another address logs in: the address was locked, not the name.
    response = attempt(client, page, users[page], PASSWORD, address="198.51.100.8")
    assert response.status_code == 302 and logged_in(client)


def test_it_lets_a_few_mistakes_through_and_then_the_right_password(users):
    client = Client()
    for n in range(django_settings.LOGIN_FAILURE_LIMIT - 1):
        response = attempt(client, "/login/", "carol", f"typo-{n}", address="203.0.113.9")
        assert response.status_code == 200 and "did not match" in response.content.decode()
    response = attempt(client, "/login/", "carol", PASSWORD, address="203.0.113.9")
    assert response.status_code == 302 and logged_in(client)


def test_it_follows_the_configured_limit_and_lockout_time(users, settings):
    from datetime import timedelta

    settings.AXES_FAILURE_LIMIT = 2
    settings.AXES_COOLOFF_TIME = timedelta(minutes=1)
    client = Client()
    assert attempt(client, "/login/", "carol", "guess", address="203.0.113.10").status_code == 200
    assert attempt(client, "/login/", "carol", "guess", address="203.0.113.10").status_code == 429
    response = attempt(client, "/login/", "carol", PASSWORD, address="203.0.113.11")
    assert response.status_code == 429 and "Try again in 1 minute," in response.content.decode()
