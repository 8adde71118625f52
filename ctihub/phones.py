"""Phone numbers: everything ctihub stores or sends is E.164 when it can be.

PBXs give numbers in many shapes (short extensions, national numbers, "+33 4
...", "tel:" URIs); phonenumbers reads them with the account's region.
"""

from __future__ import annotations

import phonenumbers
from django.conf import settings


class UnusablePhoneNumber(ValueError):
    """The text is not a number we could dial or show in E.164."""


def to_e164(raw: str, region: str | None = None) -> str:
    text = (raw or "").strip()
    if text.lower().startswith("tel:"):
        text = text[4:]
    if not text:
        raise UnusablePhoneNumber("empty phone number")
    try:
        number = phonenumbers.parse(text, (region or settings.DEFAULT_PHONE_REGION).upper())
    except phonenumbers.NumberParseException as exc:
        raise UnusablePhoneNumber(f"{raw!r} is not a phone number ({exc})") from None
    if not phonenumbers.is_possible_number(number):
        raise UnusablePhoneNumber(f"{raw!r} is not a possible phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def e164_or_empty(raw: str, region: str | None = None) -> str:
    """E.164 for real numbers; empty for extensions and labels that are not one."""
    try:
        return to_e164(raw, region)
    except UnusablePhoneNumber:
        return ""


def for_people(e164: str) -> str:
    """International format with spaces, for cards and the admin."""
    try:
        return phonenumbers.format_number(phonenumbers.parse(e164, None), phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    except phonenumbers.NumberParseException:
        return e164
