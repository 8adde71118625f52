"""How the CRM side plugs into the telephony core (``telephony.plugins``), from ``CrmSyncConfig.ready()``.

* ``calls_committed`` → ``crm_domain.calls_changed``: the hand-off of every committed change of a call
  (its tasks ride in the publisher's pipeline with the cards, ``telephony.queueing.enqueue_soon``);
* a card enricher → ``crm_domain.card_fields_many``: retailCRM's customer, manager and links on the cards;
* ``accounts.signals.agent_status_changed`` → ``crm_domain.agent_status.status_changed``: a status set in
  ctihub to retailCRM (two-way status).
* a health section → ``crm_sync.health``: the integrations on the admin's index.

Each receiver looks its function up when called, so a test that patches ``crm_sync.domain`` sees
its patch used.
"""

from __future__ import annotations


def register() -> None:
    from accounts.signals import agent_status_changed
    from telephony import plugins

    plugins.calls_committed.connect(hand_off, dispatch_uid="crm_sync.plugins.hand_off")
    plugins.register_card_enricher(crm_fields)
    agent_status_changed.connect(status_to_crm, dispatch_uid="crm_sync.plugins.status_to_crm")
    plugins.register_health_section("retailcrm_integrations", integrations_health)


def hand_off(sender, calls, **kwargs) -> None:
    from crm_sync import domain as crm_domain

    crm_domain.calls_changed(calls)


def crm_fields(calls) -> dict[int, dict]:
    from crm_sync import domain as crm_domain

    return crm_domain.card_fields_many(calls)


def status_to_crm(sender, agent, status, source, **kwargs) -> None:
    from crm_sync.domain import agent_status

    agent_status.status_changed(agent, status, source)


def integrations_health():
    from crm_sync.health import integrations_section

    return integrations_section()
