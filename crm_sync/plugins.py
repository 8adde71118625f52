"""How the CRM side plugs into the telephony core (``telephony.plugins``), from ``CrmSyncConfig.ready()``.

* ``calls_committed`` → ``crm_domain.calls_changed``: the hand-off of every committed change of a call
  (its tasks ride in the publisher's pipeline with the cards, ``telephony.queueing.enqueue_soon``);
* a card enricher → ``crm_domain.card_fields_many``: retailCRM's customer, manager and links on the cards.

Each receiver looks its function up when called, so a test that patches ``crm_sync.domain`` sees
its patch used.
"""

from __future__ import annotations


def register() -> None:
    from telephony import plugins

    plugins.calls_committed.connect(hand_off, dispatch_uid="crm_sync.plugins.hand_off")
    plugins.register_card_enricher(crm_fields)


def hand_off(sender, calls, **kwargs) -> None:
    from crm_sync import domain as crm_domain

    crm_domain.calls_changed(calls)


def crm_fields(calls) -> dict[int, dict]:
    from crm_sync import domain as crm_domain

    return crm_domain.card_fields_many(calls)
