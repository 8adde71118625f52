"""An open console loses its rights with its login: logout, deactivation, a password change.

A websocket is authenticated at its handshake only: after ``POST /logout/`` the same socket still
ran ``set_status`` and ``snapshot``, and so did one of a user set inactive. Now those close the user's
consoles at once (4401, without waiting for their next request), and every request checks first
that the session it was opened with is still valid.
"""

from __future__ import annotations

import asyncio

import pytest
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.sessions.models import Session
from django.db import connection
from django.test import Client

from accounts.models import Agent
from ctihub.asgi import application
from tests.factories import make_agent

pytestmark = pytest.mark.django_db(transaction=True)

LOGIN_REQUIRED = 4401


def logged_in(user) -> tuple[Client, list]:
    """A browser of its own (a session) and the headers its console page opens the socket with."""
    client = Client()
    client.force_login(user)
    cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
    return client, [(b"host", b"127.0.0.1:8000"), (b"origin", b"http://127.0.0.1:8000"), (b"cookie", cookie.encode())]


async def open_console(headers) -> WebsocketCommunicator:
    comm = WebsocketCommunicator(application, "/ws/console/", headers=headers)
    connected, _ = await comm.connect()
    assert connected
    assert (await comm.receive_json_from(timeout=5))["type"] == "snapshot"
    return comm


async def closed_with(comm, timeout=5) -> int:
    """The close code, skipping whatever else the console was sent first; then the close completes."""
    while True:
        message = await comm.receive_output(timeout=timeout)
        if message["type"] == "websocket.close":
            await comm.send_input({"type": "websocket.disconnect", "code": message["code"]})  # as the server would
            await comm.wait(timeout=5)
            return message["code"]


async def answer_to(comm, request: dict) -> dict:
    await comm.send_json_to(request)
    while True:
        message = await comm.receive_json_from(timeout=5)
        if message["type"] == "result" and message["id"] == request["id"]:
            return message


async def in_thread(function):
    """Run sync ORM/HTTP work off the event loop, as a request in another process would."""

    def run():
        try:
            return function()
        finally:
            connection.close()

    return await asyncio.get_running_loop().run_in_executor(None, run)


def test_it_closes_the_console_of_a_session_at_once_when_it_logs_out():
    me = make_agent()
    browser, headers = logged_in(me.user)
    other_browser, other_headers = logged_in(me.user)

    async def scenario():
        console = await open_console(headers)
        other = await open_console(other_headers)
        assert (await in_thread(lambda: browser.post("/logout/"))).status_code == 302
        assert await closed_with(console, timeout=3) == LOGIN_REQUIRED  # no request needed to close it
        # The same user's other browser is still logged in: its console goes on.
        assert (await answer_to(other, {"id": 1, "action": "snapshot"}))["ok"] is True
        await other.disconnect()

    asyncio.run(scenario())
    assert other_browser.get("/").status_code == 200


@pytest.mark.parametrize("change", ["deactivated", "password changed", "deleted"])
def test_it_closes_every_console_of_a_user_deactivated_or_whose_password_changed(change):
    me = make_agent()
    _, headers = logged_in(me.user)
    _, other_headers = logged_in(me.user)

    def apply():
        user = get_user_model().objects.get(pk=me.user_id)
        if change == "deactivated":
            user.is_active = False
            user.save()
        elif change == "password changed":
            user.set_password("a-new-pass-456")
            user.save()
        else:
            user.delete()

    async def scenario():
        consoles = [await open_console(headers), await open_console(other_headers)]
        await in_thread(apply)
        assert [await closed_with(console, timeout=3) for console in consoles] == [LOGIN_REQUIRED] * 2

    asyncio.run(scenario())


def test_it_leaves_consoles_open_when_a_user_is_saved_without_losing_a_right():
    me = make_agent()
    _, headers = logged_in(me.user)

    def rename():
        user = get_user_model().objects.get(pk=me.user_id)
        user.first_name = "Carol"
        user.save()

    async def scenario():
        console = await open_console(headers)
        await in_thread(rename)
        assert (await answer_to(console, {"id": 1, "action": "snapshot"}))["ok"] is True
        await console.disconnect()

    asyncio.run(scenario())


@pytest.mark.parametrize("loss", ["session deleted", "user deactivated", "password changed"])
def test_it_checks_the_session_on_every_request_even_when_no_signal_came(loss):
    """A session ended behind Django's back (expired and cleared, a bulk update): the next request closes."""
    me = make_agent()
    _, headers = logged_in(me.user)
    user_model = get_user_model()

    def lose():
        if loss == "session deleted":
            Session.objects.all().delete()
        elif loss == "user deactivated":
            user_model.objects.filter(pk=me.user_id).update(is_active=False)  # no save(): no signal
        else:
            user_model.objects.filter(pk=me.user_id).update(password="pbkdf2_sha256$1$salt$other")

    async def scenario():
        console = await open_console(headers)
        await in_thread(lose)
        await console.send_json_to({"id": 1, "action": "set_status", "status": "break"})
        return await closed_with(console)

    assert asyncio.run(scenario()) == LOGIN_REQUIRED
    assert Agent.objects.get(pk=me.pk).status == "free", "the request of an ended session was carried out"


def test_it_checks_the_logins_of_consoles_opening_together_as_each_alone_in_two_queries(django_assert_num_queries):
    """A connect storm read each socket's session and user alone: 9% of daphne's CPU (issue 16). Read together,
    every login still gets channels' own answer: a deleted session, an inactive user, a changed password,
    a missing or forged cookie."""
    from channels.auth import get_user
    from django.contrib.sessions.backends.db import SessionStore

    from ctihub.lib.ws_db import users_of

    agents = [make_agent() for _ in range(5)]
    keys = [logged_in(agent.user)[0].cookies[settings.SESSION_COOKIE_NAME].value for agent in agents]
    second_tab = keys[0]
    user_model = get_user_model()
    user_model.objects.filter(pk=agents[1].user_id).update(is_active=False)
    user_model.objects.filter(pk=agents[2].user_id).update(password="pbkdf2_sha256$1$salt$other")
    Session.objects.filter(session_key=keys[3]).delete()
    cookies = [*keys, second_tab, None, "not-a-session-of-ours"]

    def who(user) -> int | None:
        return user.pk if user.is_authenticated else None

    alone = [who(get_user.func({"session": SessionStore(key)})) for key in cookies]
    assert alone == [agents[0].user_id, None, None, None, agents[4].user_id, agents[0].user_id, None, None]
    for agent in agents[2:3]:  # channels flushed the stale session: log in again for the batch
        keys[2] = logged_in(agent.user)[0].cookies[settings.SESSION_COOKIE_NAME].value
    user_model.objects.filter(pk=agents[2].user_id).update(password="pbkdf2_sha256$1$salt$another")
    cookies[2] = keys[2]
    scopes = [{"session": SessionStore(key)} for key in cookies]
    together = [who(user) for user in users_of(scopes)]
    assert together == alone
    assert not Session.objects.filter(session_key=keys[2]).exists()  # flushed, as channels does
    good = [{"session": SessionStore(key)} for key in (keys[0], keys[4], second_tab)]
    with django_assert_num_queries(2):
        users = users_of(good)
    assert [who(user) for user in users] == [agents[0].user_id, agents[4].user_id, agents[0].user_id]
    assert users[0] is not users[2]  # each socket its own instance, as before
