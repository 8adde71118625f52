"""Run the simulator in a background thread of the current process (tests, scripts).

    with RunningSimulator() as sim:
        sim.state.istra.add_user("alice", "secret")
        requests.post(sim.url + "/restletrouter/v1/service/Login", ...)

The server listens on a real socket (127.0.0.1, an ephemeral port by default),
so clients talk to it exactly as to the vendor. ``sim.state`` is the live
:class:`~simulator.state.SimulatorState`; its worlds' public methods may be called
from this thread (they hop onto the server's loop).
"""

from __future__ import annotations

import asyncio
import threading

from aiohttp import web

from simulator.server import build_app
from simulator.state import SimulatorState


class RunningSimulator:
    def __init__(self, state: SimulatorState | None = None, host: str = "127.0.0.1", port: int = 0):
        self.state = state or SimulatorState()
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def istra_base(self) -> str:
        """What an account's base URL would be: ``http://HOST/restletrouter``."""
        return f"{self.url}/restletrouter"

    def start(self) -> RunningSimulator:
        self._thread = threading.Thread(target=self._run, name="simulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=10):
            raise RuntimeError("simulator did not start within 10 s")
        if self._error is not None:
            raise RuntimeError("simulator failed to start") from self._error
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        future.result(timeout=15)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop = None

    def __enter__(self) -> RunningSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        loop.run_forever()
        loop.close()

    async def _serve(self) -> None:
        self._runner = web.AppRunner(build_app(self.state), shutdown_timeout=2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
