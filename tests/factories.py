"""Small builders for test data: the fewest fields that make a valid object."""

from __future__ import annotations

import functools
import itertools

from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password

from accounts.models import Agent
from telephony.models import Call, PbxAccount, Terminal

_seq = itertools.count(1)
AGENT_PASSWORD = "agent-pass-123"


@functools.cache
def password_hash(password: str = AGENT_PASSWORD) -> str:
    """One hash of ``password`` for every user of the process given it. A hash is a million PBKDF2 rounds (about
    0.2 s of CPU, and the suite makes hundreds of users); a faster hasher is no way out, since the hub's own
    processes must take these logins as production does (they would re-hash a cheaper one at its first login,
    which changes every session's auth hash)."""
    return make_password(password)


def make_account(**fields) -> PbxAccount:
    n = next(_seq)
    defaults = {
        "name": f"pbx-{n}",
        "kind": PbxAccount.Kind.ISTRA_MYCRM,
        "base_url": "http://127.0.0.1:8100/restletrouter",
        "login": f"user{n}",
        "password": f"pw-{n}-secret",
    }
    return PbxAccount.objects.create(**{**defaults, **fields})


def make_agent(username: str | None = None, **fields) -> Agent:
    n = next(_seq)
    user = get_user_model().objects.create(username=username or f"agent{n}", password=password_hash())
    return Agent.objects.create(user=user, **{"extension_code": str(100 + n), **fields})


def make_terminal(account: PbxAccount, **fields) -> Terminal:
    n = next(_seq)
    return Terminal.objects.create(account=account, **{"pbx_id": str(5985841581756135000 + n), **fields})


def make_call(account: PbxAccount, **fields) -> Call:
    n = next(_seq)
    defaults = {"pbx_call_id": f"-{n}", "direction": Call.Direction.INBOUND, "state": Call.State.RINGING}
    return Call.objects.create(account=account, **{**defaults, **fields})
