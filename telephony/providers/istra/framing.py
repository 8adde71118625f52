"""Istra's websocket frames, as the three APIs send them: the item list and its typed fields.

Numbers stay strings until read (``read_count``), so a 64-bit id never passes through a float; a field
that is not what it says rejects the frame (``FrameRejected``), never the socket.
"""

from __future__ import annotations

import json

from telephony.updates import FrameRejected


def frame_items(text: str) -> list[dict]:
    """The items of an Istra event frame ``{"listenerName": .., "item": [..]}``.

    Also reads a ``{"count": .., "results": [..]}`` list (myRCC's GET CallLine),
    which carries the same items. Numbers stay strings, so a 64-bit id never
    passes through a float.
    """
    try:
        data = json.loads(text, parse_int=str, parse_float=str)
    except (TypeError, ValueError) as exc:
        raise FrameRejected(f"not JSON: {exc}") from None
    except RecursionError:  # nested deeper than the decoder goes: no PBX frame looks like that
        raise FrameRejected("not JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise FrameRejected("an Istra frame is a JSON object")
    items = data.get("item", data.get("results"))
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list):
        raise FrameRejected("an Istra frame has an item list")
    if not all(isinstance(item, dict) for item in items):
        raise FrameRejected("every item of an Istra frame is an object")
    return items


def read_text(item: dict, key: str) -> str | None:
    """A string field; None when absent or empty (Istra sends "" for "nothing to show")."""
    value = item.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise FrameRejected(f"{key} is not text: {value!r}")
    return value


def read_flag(item: dict, key: str) -> bool | None:
    value = item.get(key)
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return value == "true"
    raise FrameRejected(f"{key} is not true or false: {value!r}")


# Counts, durations and epoch milliseconds fit in 20 digits; a longer string is not one
# (and int() refuses strings past 4300 digits with a ValueError a socket would die of).
MAX_COUNT_DIGITS = 20


def read_count(item: dict, key: str) -> int | None:
    """A non-negative integer the PBX may send as a number or as a string of digits."""
    value = item.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= MAX_COUNT_DIGITS:
        return int(value)
    raise FrameRejected(f"{key} is not a whole number: {value[:40] if isinstance(value, str) else value!r}")
