"""The End User API's live counters on the agent's console.

Counter frames are not call updates: they go straight to the consoles of the
agents who own the account's terminals, as a ``counters`` message (handled by
``static/ctihub/voicemail.js``), through the consumer's generic ``console.push``.

The socket thread that reads a frame never touches the database (a worker holds
thousands of sockets, PostgreSQL gives a hundred connections): the owners are
looked up on the listeners' database threads (``telephony.sockets.database``)
and kept for ``OWNERS_TTL`` seconds, emptied in this process when a terminal
changes.
"""

from __future__ import annotations

from ctihub.lib.brief_cache import BriefCache
from telephony.cards import agent_group
from telephony.models import Terminal
from telephony.providers.istra_enduser.frames import Counters
from telephony.publish import publish_to_groups

MESSAGE_TYPE = "counters"
OWNERS_TTL = 30.0
_owners = BriefCache("enduser-owners", watch=(Terminal,), ttl=OWNERS_TTL)


def owner_agent_ids(account_id: int) -> list[int]:
    """The agents whose voicemail this account is: whoever its active terminals are assigned to."""
    return sorted(set(
        Terminal.objects.filter(account_id=account_id, active=True, agent__isnull=False)
        .values_list("agent_id", flat=True)
    ))


def counters_message(account_id: int, counters: Counters) -> dict:
    return {"type": MESSAGE_TYPE, "account": account_id, **counters.as_message()}


def publish_counters(account_id: int, counters: Counters):
    """Push to the owners' consoles only: a supervisor's console shows their own voicemail, not everyone's.

    For a socket thread: the owners come from the cache or the listeners' database threads.
    """
    from telephony.sockets.database import db_workers

    owners = _owners.get(account_id, lambda: db_workers().run(lambda: tuple(owner_agent_ids(account_id))))
    groups = [agent_group(agent_id) for agent_id in owners or ()]
    if not groups:
        return None
    return publish_to_groups(groups, {"type": "console.push", "payload": counters_message(account_id, counters)})
