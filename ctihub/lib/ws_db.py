"""Database work of the websocket side (a console's login, viewer and snapshot) on the web pool's threads.

``channels.db.database_sync_to_async`` runs every call of the process on asgiref's one
"thread-sensitive" thread. In a connect storm (1,000 consoles at once: a deploy, a network blip)
each console's session and user, then its viewer, then its snapshot queued on that one thread, one
query after another, and each hop behind all the logins still waiting: 8-22 s for the last snapshot,
and hundreds of consoles closed to try again (issue 16). On the web pool (``ctihub.lib.http_pool``,
``WEB_POOL_THREADS`` threads, each keeping its database connection) their round trips overlap.
Old and broken connections are closed before and after each call, as ``database_sync_to_async`` means to.
"""

from __future__ import annotations

import asyncio
import copy
import weakref

from asgiref.sync import sync_to_async
from channels.auth import (
    BACKEND_SESSION_KEY,
    HASH_SESSION_KEY,
    AuthMiddleware,
    CookieMiddleware,
    SessionMiddleware,
    _get_user_session_key,
    load_backend,
)
from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone
from django.utils.crypto import constant_time_compare

from ctihub.lib.http_pool import pool


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


_slots: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> its semaphore


def setup_slots() -> asyncio.Semaphore:
    """How many consoles of this process join their groups at once (leaving too): the rest wait in turn.
    Their viewers and snapshots are read in batches (``Batched``), not here.

    All at once (a deploy, a network blip: every console reconnecting), each console's joins opened
    Redis connections of their own (1,763 for 1,000 consoles), and a join waited longer than
    ``JOIN_TIMEOUT_SECONDS`` behind the others: 848 of 1,000 consoles were closed to try again, which
    only made the next storm (issue 16). In turn, each join is timed from its own start and Redis sees
    a few dozen connections. One per event loop: a semaphore belongs to the loop it first waits on
    (the tests run several).
    """
    loop = asyncio.get_running_loop()
    slots = _slots.get(loop)
    if slots is None:
        slots = _slots[loop] = asyncio.Semaphore(settings.CONSOLE_SETUP_CONCURRENCY)
    return slots


class PooledAuthMiddleware(AuthMiddleware):
    """Channels' own session-to-user check (``channels.auth.get_user``), run on the web pool, the sockets
    opening together checked together (``users_of``).

    Not in turn (``setup_slots``): it runs before the consumer accepts, and daphne rejects a
    websocket not accepted within its connect timeout (5 s); batches bound it.
    """

    async def resolve_scope(self, scope):
        scope["user"]._wrapped = await _users(scope)


def users_of(scopes: list[dict]) -> list:
    """``channels.auth.get_user`` of each scope, their sessions read in one query and their users in one.

    One at a time, each socket's session then its user were two queries and their ORM work, 9% of daphne's
    CPU in a connect storm (issue 16). Only the database session store and ``ModelBackend``'s user look-up
    are read together: any other store or backend is asked as channels asks it. The rest (the backend
    named in the session, the session hash, a session flushed when it does not match) is channels' own.
    """
    from django.contrib.auth import get_user_model
    from django.contrib.auth.backends import ModelBackend
    from django.contrib.auth.models import AnonymousUser  # not at import: the models may not be ready then

    _read_sessions([scope["session"] for scope in scopes])
    wanted: dict[int, tuple] = {}  # scope's index -> (user id, backend)
    for n, scope in enumerate(scopes):
        session = scope["session"]
        try:
            user_id = _get_user_session_key(session)
            backend_path = session[BACKEND_SESSION_KEY]
        except KeyError:
            continue
        if backend_path in settings.AUTHENTICATION_BACKENDS:
            wanted[n] = (user_id, load_backend(backend_path))
    together = {user_id for user_id, backend in wanted.values() if type(backend).get_user is ModelBackend.get_user}
    users = {user.pk: user for user in get_user_model()._default_manager.filter(pk__in=together)} if together else {}
    found = []
    for n, scope in enumerate(scopes):
        user = None
        if n in wanted:
            user_id, backend = wanted[n]
            if user_id in together:  # as ModelBackend.get_user, each socket with its own instance
                user = copy.copy(users[user_id]) if user_id in users else None
                user = user if user is not None and backend.user_can_authenticate(user) else None
            else:
                user = backend.get_user(user_id)
            if hasattr(user, "get_session_auth_hash"):
                session = scope["session"]
                session_hash = session.get(HASH_SESSION_KEY)
                if not (session_hash and constant_time_compare(session_hash, user.get_session_auth_hash())):
                    session.flush()
                    user = None
        found.append(user or AnonymousUser())
    return found


def _read_sessions(sessions: list) -> None:
    """Loads the database sessions of ``sessions`` not loaded yet with one query, as each ``load`` would; one
    not found (expired, deleted) is left to its own ``load``, which forgets its key."""
    from django.contrib.sessions.backends.db import SessionStore

    stores = {}
    for session in sessions:
        store = getattr(session, "_wrapped", session)  # channels' LazyObject, resolved by SessionMiddleware
        if type(store).load is SessionStore.load and not hasattr(store, "_session_cache") and store.session_key:
            stores.setdefault(store.session_key, []).append(store)
    if not stores:
        return
    model = next(iter(stores.values()))[0].model
    for row in model.objects.filter(session_key__in=list(stores), expire_date__gt=timezone.now()):
        for store in stores[row.session_key]:
            store._session_cache = store.decode(row.session_data)



def PooledAuthMiddlewareStack(inner):  # noqa: N802 - named as channels' AuthMiddlewareStack
    return CookieMiddleware(SessionMiddleware(PooledAuthMiddleware(inner)))


class Batched:
    """One function of many consoles' calls, run once for all the calls waiting: ``func(items) -> results``,
    a result per item in order, on the web pool.

    In a connect storm each console read its viewer and its snapshot alone: the same few queries, their ORM
    compile and round trip a thousand times over, half of daphne's CPU per console (issue 16). Here the calls
    made while one batch is read wait for the next, and that one reads them all: one console alone waits for
    nothing but its own read. A caller that gave up (its console closed) is left out of its batch if that
    batch has not started, and its result dropped if it has. A batch that fails is read again item by item,
    so what fails one console (a bad row, say) fails that console only, as when each read alone.
    One batch at a time per event loop, at most ``most`` items each.
    """

    def __init__(self, func, most: int):
        self.func = func
        self.most = most
        self._loops: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> (waiting, task)

    async def __call__(self, item):
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None:
            state = self._loops[loop] = [[], None]
        future = loop.create_future()
        state[0].append((item, future))
        if state[1] is None or state[1].done():
            state[1] = loop.create_task(self._drain(state))
        return await future

    async def _drain(self, state) -> None:
        waiting = state[0]
        while waiting:
            batch = [(item, future) for item, future in waiting[: self.most] if not future.done()]
            del waiting[: self.most]
            if not batch:
                continue
            try:
                await self._read(batch)
            except BaseException:  # cancelled (the loop closing): each caller is told so
                for _item, future in batch + waiting:
                    future.cancel()
                waiting.clear()
                raise

    async def _read(self, batch: list) -> None:
        try:
            results = await on_web_pool(self.func)([item for item, _future in batch])
        except Exception as exc:
            if len(batch) > 1:
                for one in batch:
                    if not one[1].done():
                        await self._read([one])
                return
            future = batch[0][1]
            if not future.done():
                future.set_exception(exc)
            return
        for (_item, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)


# The sockets opening together, checked together: at most this many to a read.
_users = Batched(users_of, 100)
