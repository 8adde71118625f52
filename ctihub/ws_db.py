"""Database work of the websocket side (a console's login, viewer and snapshot) on the web pool's threads.

``channels.db.database_sync_to_async`` runs every call of the process on asgiref's one
"thread-sensitive" thread. In a connect storm (1,000 consoles at once: a deploy, a network blip)
each console's session and user, then its viewer, then its snapshot queued on that one thread, one
query after another, and each hop behind all the logins still waiting: 8-22 s for the last snapshot,
and hundreds of consoles closed to try again (issue 16). On the web pool (``ctihub.http_pool``,
``WEB_POOL_THREADS`` threads, each keeping its database connection) their round trips overlap.
Old and broken connections are closed before and after each call, as ``database_sync_to_async`` means to.
"""

from __future__ import annotations

from asgiref.sync import sync_to_async
from channels.auth import AuthMiddleware, CookieMiddleware, SessionMiddleware, get_user
from django.db import close_old_connections

from ctihub.http_pool import pool


def on_web_pool(func):
    def closing_old_connections(*args, **kwargs):
        # Inside the call, not around it as DatabaseSyncToAsync does: asgiref runs the call in a copy of
        # the caller's context, and a connection it opened there was not the one closed outside it (every
        # pool thread kept one open past CONN_MAX_AGE=0, found by the tests' database teardown).
        close_old_connections()
        try:
            return func(*args, **kwargs)
        finally:
            close_old_connections()

    return sync_to_async(closing_old_connections, thread_sensitive=False, executor=pool())


class PooledAuthMiddleware(AuthMiddleware):
    """Channels' own session-to-user check (``channels.auth.get_user``), run on the web pool."""

    async def resolve_scope(self, scope):
        scope["user"]._wrapped = await on_web_pool(get_user.func)(scope)


def PooledAuthMiddlewareStack(inner):  # noqa: N802 - named as channels' AuthMiddlewareStack
    return CookieMiddleware(SessionMiddleware(PooledAuthMiddleware(inner)))
