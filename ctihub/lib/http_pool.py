"""Django over HTTP under daphne: each request handled whole on a bounded pool of threads.

Django's own ASGI handler runs the sync parts of a request (every view here, the
``request_started`` receivers, WhiteNoise, CSRF's ``process_view``, rendering) through
``sync_to_async(thread_sensitive=True)``: a new thread for every request, and several
hops between it and the event loop. Django's database connections are per thread, so
each request also opened a PostgreSQL connection of its own and kept it
(``DATABASE_CONN_MAX_AGE``) until its thread was collected. Under load (benchmark 4,
makeCallUrl at 200 requests/s) the hub ran out of PostgreSQL connections and spent its
CPU on threads and hops.

This handler keeps daphne's loop for what it is good at (reading the request, sending
the answer, websockets) and runs the rest of the request, middleware and view, in one
go on one of ``WEB_POOL_THREADS`` threads that live as long as the process, as a
threaded WSGI server would: each thread keeps its database connection between
requests and a view waiting on a PBX ties up one pool thread, never the loop.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers import base
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.http import FileResponse
from django.urls import set_script_prefix

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=settings.WEB_POOL_THREADS, thread_name_prefix="ctihub-web")
        return _pool


def on_pool(func):
    # sync_to_async, not run_in_executor: it tells the thread about daphne's loop, so a
    # view's async_to_sync (a card to the Channels layer) runs there, not on a loop of its own.
    return sync_to_async(func, thread_sensitive=False, executor=pool())


class PooledASGIHandler(ASGIHandler):
    def __init__(self):
        base.BaseHandler.__init__(self)
        self.load_middleware(is_async=False)
        self._respond_on_pool = on_pool(self._respond)

    async def handle(self, scope, receive, send):
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        try:
            response = await self._respond_on_pool(scope, body_file)
            try:
                await self.send_response(response, send)
            finally:
                if response.streaming:
                    await on_pool(response.close)()
        finally:
            body_file.close()

    def _respond(self, scope, body_file):
        """What Django's handlers do between reading a request and sending its answer, on a pool thread."""
        set_script_prefix(get_script_prefix(scope))
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, response = self.create_request(scope, body_file)
        if request is not None:
            response = self.get_response(request)
            response._handler_class = self.__class__
            if isinstance(response, FileResponse):
                response.block_size = self.chunk_size
        if not response.streaming:
            # request_finished closes this thread's connection if it is broken or too old:
            # it has to run here, not on whichever thread sends the answer.
            response.close()
        return response
