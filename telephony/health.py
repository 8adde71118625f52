"""The health of what the hub depends on, as the admin's index shows it: a section per kind of thing.

The core's own sections are the PBX accounts and their listeners (the sockets); an app above adds its
own through ``telephony.plugins.register_health_section`` (the CRM side: its retailCRM integrations).
``sections()`` reads them all; the project's admin site (``ctihub.admin_site``) renders them.

Each row says ``ok``, ``degraded`` (the hub is retrying, or waits for a worker), ``down`` (it gave up:
an admin must act) or ``off`` (disabled on purpose). A section reads a bounded number of queries
whatever the number of its rows, and shows the worst ``ROW_LIMIT`` of them with counts of all: an
admin with 800 terminals sees the failing sockets first, not a page of healthy ones.

Nothing here reads a credential: the rows carry names, states and errors only, and errors go through
the logs' masking (a webhook URL names its secret).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from django.db.models import Case, Count, IntegerField, Model, Q, Value, When
from django.urls import reverse
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _

from ctihub.lib.logs import mask_secrets
from telephony import plugins
from telephony.models import Listener, PbxAccount

logger = logging.getLogger(__name__)

OK, DEGRADED, DOWN, OFF = "ok", "degraded", "down", "off"
STATUSES = (DOWN, DEGRADED, OK, OFF)  # the worst first: the order of the rows
ROW_LIMIT = 25


@dataclass(frozen=True)
class HealthFix:
    """An admin action on one object that fixes (or retries) what is wrong: a POST to the model's changelist,
    as the changelist's own action menu sends it, so the action's permission checks and messages apply."""

    label: str
    model: type[Model]
    action: str
    object_id: int

    @property
    def changelist_url(self) -> str:
        meta = self.model._meta
        return reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist")


@dataclass(frozen=True)
class HealthRow:
    name: str
    status: str  # one of STATUSES
    state_label: str  # the object's own words: "Failed (needs an admin)"
    url: str  # its change page
    last_event_at: datetime | None = None
    last_error: str = ""
    detail: str = ""
    fix: HealthFix | None = None


@dataclass(frozen=True)
class HealthSection:
    key: str
    title: str
    model: type[Model]  # who may see the section: those who may view this model in the admin
    rows: list[HealthRow] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # every object's status, shown or not
    detail_title: str = ""
    last_event_title: str = _("Last event")
    error: str = ""  # the section could not be read

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def hidden(self) -> int:
        return max(self.total - len(self.rows), 0)

    @property
    def changelist_url(self) -> str:
        meta = self.model._meta
        return reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist")

    @property
    def summary(self) -> list[tuple[str, int]]:
        return [(status, self.counts[status]) for status in STATUSES if self.counts.get(status)]


def change_url(obj: Model) -> str:
    return reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])


def error_text(text: str) -> str:
    return mask_secrets(text or "").strip()


def _severity(conditions: dict[str, Q]) -> Case:
    """The rank of each row (STATUSES' order) in SQL, so the worst come first under the limit."""
    return Case(*(When(conditions[status], then=Value(rank)) for rank, status in enumerate(STATUSES[:-1])),
                default=Value(len(STATUSES) - 1), output_field=IntegerField())


def _counts(queryset, conditions: dict[str, Q]) -> dict[str, int]:
    """{status: how many}, in one query; ``off`` is the rest."""
    found = queryset.aggregate(total=Count("pk"), **{status: Count("pk", filter=q) for status, q in conditions.items()})
    counts = {status: found[status] for status in conditions}
    counts[OFF] = found["total"] - sum(counts.values())
    return counts


# --- PBX accounts ---------------------------------------------------------------------------------

ACCOUNT_CONDITIONS = {
    DOWN: Q(enabled=True, status=PbxAccount.Status.FAILED),
    DEGRADED: Q(enabled=True, status__in=[PbxAccount.Status.CONNECTING, PbxAccount.Status.DEGRADED]),
    OK: Q(enabled=True, status=PbxAccount.Status.CONNECTED),
}


def accounts_section(limit: int | None = None) -> HealthSection:
    accounts = (PbxAccount.objects.annotate(severity=_severity(ACCOUNT_CONDITIONS))
                # Never the encrypted fields: nothing here needs a secret, and each would be decrypted.
                .only("name", "kind", "enabled", "status", "last_event_at", "last_error")
                .order_by("severity", "name")[:limit or ROW_LIMIT])
    rows = []
    for account in accounts:
        status = STATUSES[account.severity]
        fix = None
        if status == DOWN:
            fix = HealthFix(gettext("Test the connection"), PbxAccount, "test_connection", account.pk)
        rows.append(HealthRow(
            name=account.name, status=status,
            state_label=account.get_status_display() if account.enabled else gettext("Disabled"),
            url=change_url(account), last_event_at=account.last_event_at, last_error=error_text(account.last_error),
            detail=account.get_kind_display(), fix=fix,
        ))
    return HealthSection("pbx_accounts", gettext("PBX accounts"), PbxAccount, rows, _counts(PbxAccount.objects, ACCOUNT_CONDITIONS),
                         detail_title=gettext("Kind"))


# --- listeners ------------------------------------------------------------------------------------

LISTENER_CONDITIONS = {
    DOWN: Q(account__enabled=True, state=Listener.State.FAILED),
    DEGRADED: Q(account__enabled=True,
                state__in=[Listener.State.IDLE, Listener.State.CONNECTING, Listener.State.BACKOFF]),
    OK: Q(account__enabled=True, state=Listener.State.CONNECTED),
}


def listeners_section(limit: int | None = None) -> HealthSection:
    listeners = (Listener.objects.select_related("account").annotate(severity=_severity(LISTENER_CONDITIONS))
                 .only("name", "state", "last_event_at", "last_error", "reconnects", "account__name",
                       "account__enabled")
                 .order_by("severity", "account__name", "name")[:limit or ROW_LIMIT])
    rows = []
    for listener in listeners:
        status = STATUSES[listener.severity]
        fix = None
        if status == DOWN or listener.state == Listener.State.BACKOFF:
            fix = HealthFix(gettext("Restart listeners"), PbxAccount, "restart_listeners", listener.account_id)
        detail = listener.account.name
        if listener.reconnects:
            detail += " · " + ngettext("%(count)s reconnect", "%(count)s reconnects", listener.reconnects) % {
                "count": listener.reconnects}
        rows.append(HealthRow(
            name=str(listener), status=status,
            state_label=listener.get_state_display() if listener.account.enabled else gettext("Account disabled"),
            url=change_url(listener), last_event_at=listener.last_event_at, last_error=error_text(listener.last_error),
            detail=detail, fix=fix,
        ))
    return HealthSection("listeners", gettext("Listeners (PBX sockets)"), Listener, rows,
                         _counts(Listener.objects, LISTENER_CONDITIONS), detail_title=gettext("Account"))


# --- all of them ----------------------------------------------------------------------------------


def sections() -> list[HealthSection]:
    """The core's sections, then each plug-in's. A plug-in that fails shows as such, the rest still render."""
    found = [accounts_section(), listeners_section()]
    for name, provider in plugins.health_section_providers():
        try:
            found.append(provider())
        except Exception as exc:  # one broken section must not take the admin's index down with it
            logger.exception("health section %s failed", name)
            found.append(HealthSection(name, name, Model, error=gettext("could not be read: %(error)s") % {"error": type(exc).__name__}))
    return found
