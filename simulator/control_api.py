"""What every simulated system's control API (``/_sim/<system>/...``) shares: JSON in, JSON errors out.

Tests and the demo drive the simulator through these endpoints, so a bad request
must say what is wrong: unknown ids answer 404, bad bodies 400, and each system
adds the errors of its own world (``json_errors({IstraError: ...})``).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any

from aiohttp import web

ErrorAnswer = Callable[[Exception], tuple[int, str]]


def json_errors(extra: dict[type[Exception], ErrorAnswer] | None = None):
    """A decorator: the handler's result as JSON; KeyError 404, the ``extra`` errors as they say, bad input 400."""
    extra = extra or {}

    def decorate(handler: Callable[[web.Request], Awaitable[Any]]):
        @wraps(handler)
        async def wrapper(request: web.Request) -> web.Response:
            try:
                result = await handler(request)
            except KeyError as exc:
                return web.json_response({"error": str(exc.args[0]) if exc.args else "not found"}, status=404)
            except tuple(extra) or () as exc:
                status, message = next(answer for kind, answer in extra.items() if isinstance(exc, kind))(exc)
                return web.json_response({"error": message}, status=status)
            except (ValueError, TypeError) as exc:
                return web.json_response({"error": str(exc)}, status=400)
            if isinstance(result, web.StreamResponse):
                return result
            return web.json_response(result)

        return wrapper

    return decorate


async def read_body(request: web.Request) -> dict[str, Any]:
    text = await request.text()
    if not text.strip():
        return {}
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"malformed JSON: {exc.msg}") from None
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    return body


def only(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = set(body) - set(allowed)
    if unknown:
        raise ValueError(f"unknown keys: {', '.join(sorted(unknown))}")


def required(body: dict[str, Any], key: str) -> Any:
    if body.get(key) in (None, ""):
        raise ValueError(f"{key!r} is required")
    return body[key]
