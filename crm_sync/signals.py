"""Re-register the module when what it lists changes: an agent's code or user id, a shop's number.

retailCRM keeps its own copy of the additional codes and external phones (we
register with ``allowEdit: false``), so every change here must reach it. The
task is queued on commit (a rolled-back edit sends nothing) and debounced (an
admin form saving several inline rows sends one registration).
"""

from __future__ import annotations

from django.db import transaction
from django.db.models.signals import post_delete, post_save, pre_save
from django.dispatch import receiver

from accounts.models import Agent
from crm_sync.models import ExternalPhone

REGISTERED_AGENT_FIELDS = ("extension_code", "retailcrm_user_id")


def _reregister(integration_ids) -> None:
    from crm_sync.tasks import queue_registration

    ids = list(integration_ids)
    transaction.on_commit(lambda: [queue_registration(i) for i in ids])


def _all_integrations():
    from crm_sync.domain import integrations_to_reregister

    return integrations_to_reregister().values_list("id", flat=True)


@receiver(pre_save, sender=Agent, dispatch_uid="crm_sync.agent_pre_save")
def _remember_agent_codes(sender, instance: Agent, raw=False, **kwargs):
    if raw or instance.pk is None:
        instance._crm_registered_before = None
        return
    instance._crm_registered_before = (
        Agent.objects.filter(pk=instance.pk).values_list(*REGISTERED_AGENT_FIELDS).first()
    )


@receiver(post_save, sender=Agent, dispatch_uid="crm_sync.agent_post_save")
def _agent_saved(sender, instance: Agent, created=False, raw=False, **kwargs):
    if raw:
        return
    now = tuple(getattr(instance, name) for name in REGISTERED_AGENT_FIELDS)
    before = getattr(instance, "_crm_registered_before", None)
    if created or before is None:
        if all(now):
            _reregister(_all_integrations())
    elif tuple(before) != now:
        _reregister(_all_integrations())


@receiver(post_delete, sender=Agent, dispatch_uid="crm_sync.agent_post_delete")
def _agent_deleted(sender, instance: Agent, **kwargs):
    if instance.extension_code and instance.retailcrm_user_id:
        _reregister(_all_integrations())


@receiver(post_save, sender=ExternalPhone, dispatch_uid="crm_sync.phone_post_save")
@receiver(post_delete, sender=ExternalPhone, dispatch_uid="crm_sync.phone_post_delete")
def _external_phone_changed(sender, instance: ExternalPhone, raw=False, **kwargs):
    if raw:
        return
    _reregister([instance.integration_id])

