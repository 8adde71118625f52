"""Istra's websocket frames, as the three APIs send them: the item list and its typed fields.

Numbers stay strings until read (``read_count``), so a 64-bit id never passes through a float. A field
the event cannot do without (its name, the call's id, a line's state) that is not what it says rejects
the item (``FrameRejected``), never the socket; any other field is read through ``OptionalFields``,
which takes one it cannot read as absent and notes why, so one odd value never costs the event (a
lost ``callDropped`` leaves a call ringing until the sweep).
"""

from __future__ import annotations

import json

from telephony.providers import unexpected
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
    """true/false, as JSON or as a string in any case ("True" from a Java toString, "TRUE")."""
    value = item.get(key)
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise FrameRejected(f"{key} is not true or false: {_shown(value)}")


# Counts, durations and epoch milliseconds fit in 20 digits; a longer string is not one
# (and int() refuses strings past 4300 digits with a ValueError a socket would die of).
MAX_COUNT_DIGITS = 20


def read_count(item: dict, key: str) -> int | None:
    """A non-negative integer the PBX may send as a number or as a string of digits.

    A decimal ("262.0", "262.5": a JSON number a serializer wrote as a double) counts its whole part.
    """
    value = item.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.isascii():
        whole, dot, fraction = value.partition(".")
        if whole.isdigit() and len(whole) <= MAX_COUNT_DIGITS and (not dot or fraction.isdigit()):
            return int(whole)
    raise FrameRejected(f"{key} is not a whole number: {_shown(value)}")


def _shown(value) -> str:
    return repr(value[:40] if isinstance(value, str) else value)[:60]


class OptionalFields:
    """An item's optional fields: one that cannot be read is taken as absent, and noted in ``unread``.

    The domain takes an absent field as "not said" and keeps what the call has, so a call's drop with a
    ``ringingTime`` of "-1" still ends it. ``unread`` says what was passed over, for one log line.
    """

    def __init__(self, item: dict):
        self.item = item
        self.unread: list[str] = []

    def text(self, key: str) -> str | None:
        return self.read(read_text, self.item, key)

    def flag(self, key: str) -> bool | None:
        return self.read(read_flag, self.item, key)

    def count(self, key: str) -> int | None:
        return self.read(read_count, self.item, key)

    def read(self, reader, *args):
        """``reader(*args)``, or None (noted) when it raises ``FrameRejected``."""
        try:
            return reader(*args)
        except FrameRejected as exc:
            self.unread.append(str(exc))
            return None

    def say(self, logger, account_id, what: str, about: str, *args) -> None:
        """The fields passed over, as ``say_unread`` logs them."""
        say_unread(logger, account_id, what, self.unread, about, *args)


def say_unread(logger, account_id, what: str, reasons: list[str], about: str, *args) -> None:
    """Each field ``OptionalFields`` passed over, logged once per account and reason (``unexpected.warn_once``):
    "<what> <about % args>: <reason>; read as absent, the rest applies"."""
    for reason in reasons:
        unexpected.warn_once(logger, account_id, f"{what} field", reason,
                             f"{what} {about}: %s; read as absent, the rest applies", *args, reason)
