"""How the CRM side plugs into the telephony core (``telephony.plugins``), from ``CrmSyncConfig.ready()``.

* ``calls_committed`` → ``services.calls_changed``: the hand-off of every committed change of a call
  (its tasks ride in the publisher's pipeline with the cards, ``telephony.queueing.enqueue_soon``);
* a card enricher → ``services.card_fields_many``: retailCRM's customer, manager and links on the cards;
* a health section → ``crm_sync.health``: the integrations on the admin's index.

Each receiver looks its function up when called, so a test that patches ``crm_sync.services`` sees
its patch used.
"""

from __future__ import annotations


def register() -> None:
    from telephony import plugins

    plugins.calls_committed.connect(hand_off, dispatch_uid="crm_sync.plugins.hand_off")
    plugins.register_card_enricher(crm_fields)
    plugins.register_health_section("retailcrm_integrations", integrations_health)


def hand_off(sender, calls, **kwargs) -> None:
    from crm_sync import services

    services.calls_changed(calls)


def crm_fields(calls) -> dict[int, dict]:
    from crm_sync import services

    return services.card_fields_many(calls)


def integrations_health():
    from crm_sync.health import integrations_section

    return integrations_section()
