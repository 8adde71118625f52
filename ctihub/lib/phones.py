"""Phone numbers: everything ctihub stores or sends is E.164 when it can be.

PBXs give numbers in many shapes (short extensions, national numbers, "+33 4
...", "tel:" URIs); phonenumbers reads them with the account's region.
"""

from __future__ import annotations

from functools import lru_cache

import phonenumbers
from django.conf import settings

# Parsing a number costs about a quarter of a millisecond and every frame of a call repeats it:
# the event path converts the same few thousand numbers over and over.
_CACHED_NUMBERS = 8192


class UnusablePhoneNumber(ValueError):
    """The text is not a number we could dial or show in E.164."""


def to_e164(raw: str, region: str | None = None) -> str:
    return _to_e164((raw or "").strip(), (region or settings.DEFAULT_PHONE_REGION).upper())


@lru_cache(maxsize=_CACHED_NUMBERS)
def _to_e164(raw: str, region: str) -> str:
    text = raw
    if text.lower().startswith("tel:"):
        text = text[4:]
    if not text:
        raise UnusablePhoneNumber("empty phone number")
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException as exc:
        raise UnusablePhoneNumber(f"{raw!r} is not a phone number ({exc})") from None
    if not phonenumbers.is_possible_number(number):
        raise UnusablePhoneNumber(f"{raw!r} is not a possible phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def e164_or_empty(raw: str, region: str | None = None) -> str:
    """E.164 for real numbers; empty for extensions and labels that are not one."""
    return _e164_or_empty((raw or "").strip(), (region or settings.DEFAULT_PHONE_REGION).upper())


@lru_cache(maxsize=_CACHED_NUMBERS)  # extensions are not numbers, and a failed parse is the slowest
def _e164_or_empty(raw: str, region: str) -> str:
    try:
        return _to_e164(raw, region)
    except UnusablePhoneNumber:
        return ""


@lru_cache(maxsize=_CACHED_NUMBERS)
def region_of(e164: str) -> str:
    """The country (ISO 3166, e.g. RU) of an E.164 number; '' when it has none (or is not one)."""
    try:
        return phonenumbers.region_code_for_number(phonenumbers.parse(e164, None)) or ""
    except phonenumbers.NumberParseException:
        return ""


@lru_cache(maxsize=_CACHED_NUMBERS)
def for_people(e164: str) -> str:
    """International format with spaces, for cards and the admin."""
    try:
        return phonenumbers.format_number(phonenumbers.parse(e164, None), phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    except phonenumbers.NumberParseException:
        return e164
