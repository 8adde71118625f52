"""Times the PBXs send as numbers, shared by the providers that read them (as ``unexpected`` is)."""

from __future__ import annotations

from datetime import UTC, datetime

# An epoch number past this many seconds (the year 5138) is milliseconds: Istra's call history and voicemail
# times are seconds in the doc, milliseconds on some platforms; a Telepo timestamp may come as either.
EPOCH_MS_FROM = 10**11


def from_epoch(number: float) -> datetime | None:
    """``number`` as epoch seconds, or milliseconds past ``EPOCH_MS_FROM``; None past what a datetime holds."""
    seconds = number / 1000 if abs(number) >= EPOCH_MS_FROM else number
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return None
