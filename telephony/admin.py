import logging
from datetime import timedelta

from django.conf import settings
from django.contrib import admin, messages
from django.utils import timezone
from django.utils.html import format_html_join
from django.utils.safestring import mark_safe
from django.utils.translation import gettext, pgettext_lazy
from django.utils.translation import gettext_lazy as _

from ctihub.lib.secrets import secret_form_for
from telephony import control
from telephony import updates as u
from telephony.models import Call, CallEvent, Listener, PbxAccount, Terminal
from telephony.providers import registry
from telephony.providers.base import ProviderError

logger = logging.getLogger(__name__)

SECRET_FIELDS = ("password", "api_token", "webhook_secret")
LIVE_STATUS_FIELDS = ("status", "status_since", "last_event_at", "last_error", "last_error_at")
# What the PBX told every process about this account (telephony.providers.istra.session).
PBX_MEMORY_FIELDS = ("login_refusal", "moved_permanently")


def login_hold_ends(account: PbxAccount):
    return account.login_refused_at + timedelta(seconds=settings.ISTRA_LOGIN_COOLDOWN_SECONDS)


class TerminalInline(admin.TabularInline):
    model = Terminal
    extra = 0
    fields = ("pbx_id", "extension", "label", "device_model", "agent", "active")
    autocomplete_fields = ("agent",)
    show_change_link = True


class ListenerInline(admin.TabularInline):
    model = Listener
    extra = 0
    fields = ("name", "terminal", "state", "owner", "connected_since", "last_event_at", "last_error")
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(PbxAccount)
class PbxAccountAdmin(admin.ModelAdmin):
    form = secret_form_for(PbxAccount, SECRET_FIELDS)
    list_display = ("name", "kind", "base_url", "enabled", "status", "status_since", "last_event_at", "last_error",
                    "login_refusal_short")
    list_filter = ("kind", "enabled", "status")
    search_fields = ("name", "base_url", "enterprise", "login")
    readonly_fields = LIVE_STATUS_FIELDS + PBX_MEMORY_FIELDS + (
        "created_at", "updated_at", "provider_notes")
    inlines = [TerminalInline, ListenerInline]
    fieldsets = (
        (None, {"fields": ("name", "kind", "enabled")}),
        (_("Connection"), {"fields": ("base_url", "ws_url", "enterprise", "login", "ca_bundle", "default_region",
                                   "provider_notes")}),
        (_("Credentials (write-only)"), {"fields": SECRET_FIELDS}),
        (_("Live status"), {"fields": LIVE_STATUS_FIELDS + PBX_MEMORY_FIELDS + ("created_at", "updated_at")}),
    )
    actions = ["test_connection", "sync_terminals", "restart_listeners", "forget_redirect"]

    @admin.display(description=_("Refused login"))
    def login_refusal(self, obj):
        if obj is None or obj.login_refused_at is None:
            return "-"
        ends = login_hold_ends(obj)
        if ends > timezone.now():
            hold = gettext("until you save this account (with the right password) or until %(ends)s, then one "
                           "login is tried") % {"ends": f"{timezone.localtime(ends):%Y-%m-%d %H:%M:%S %Z}"}
        else:
            hold = gettext("over: the next login is tried")
        return gettext("Refused at %(at)s: %(reason)s. Istra suspends an account after too many failed logins in a "
                       "row, so nothing logs in with these credentials %(hold)s.") % {
            "at": f"{timezone.localtime(obj.login_refused_at):%Y-%m-%d %H:%M:%S %Z}",
            "reason": obj.login_refused_reason or "HTTP 401", "hold": hold}

    @admin.display(description=_("Login refused"))
    def login_refusal_short(self, obj):
        if obj.login_refused_at is None:
            return "-"
        ends = login_hold_ends(obj)
        if ends <= timezone.now():
            return gettext("%(at)s (hold over)") % {"at": f"{timezone.localtime(obj.login_refused_at):%Y-%m-%d %H:%M}"}
        return gettext("%(at)s, held until a save or %(ends)s") % {
            "at": f"{timezone.localtime(obj.login_refused_at):%Y-%m-%d %H:%M}",
            "ends": f"{timezone.localtime(ends):%H:%M}"}

    @admin.display(description=_("Moved permanently to"))
    def moved_permanently(self, obj):
        if obj is None or not obj.redirected_base_url:
            return "-"
        when = (gettext("the PBX's permanent redirect at %(when)s")
                % {"when": f"{timezone.localtime(obj.redirected_at):%Y-%m-%d %H:%M:%S %Z}"}
                if obj.redirected_at else gettext("the PBX's permanent redirect"))
        return gettext("%(url)s (%(redirect)s): every request and the websocket go there. Edit the base URL, or use "
                       "the action \"Forget the remembered redirect\", to go back to the base URL.") % {
            "url": obj.redirected_base_url, "redirect": when}

    def save_model(self, request, obj, form, change):
        """Any save lifts a login refusal (the admin has looked at the account); a new base URL drops a redirect."""
        refused = change and obj.login_refused_at is not None
        if refused:
            obj.login_refused_at, obj.login_refused_reason, obj.login_refused_credentials = None, "", ""
        if change and "base_url" in form.changed_data:
            obj.redirected_base_url, obj.redirected_at = "", None
        super().save_model(request, obj, form, change)
        if refused:
            # Its listeners failed on the refusal and wait for an admin: this save is that admin.
            try:
                count = control.restart_listeners(obj)
            except Exception:
                logger.warning("could not restart the listeners of account %s", obj.pk, exc_info=True)
                self.message_user(request, gettext("%(account)s: logins allowed again; use \"Restart listeners\" to "
                                                   "reconnect its sockets.") % {"account": obj.name}, messages.WARNING)
            else:
                self.message_user(request, gettext("%(account)s: logins allowed again; %(count)s listeners restarting.")
                                  % {"account": obj.name, "count": count}, messages.INFO)

    @admin.action(permissions=["change"], description=_("Forget the remembered redirect (go back to the base URL)"))
    def forget_redirect(self, request, queryset):
        count = queryset.exclude(redirected_base_url="").update(redirected_base_url="", redirected_at=None)
        self.message_user(request, gettext("%(count)s accounts go back to their base URL at their next login.")
                          % {"count": count}, messages.SUCCESS)

    @admin.display(description=_("About this PBX"))
    def provider_notes(self, obj):
        # What the account's provider says of it (telephony/providers/<kind>/admin.py): setup, reconciling.
        if obj is None or obj.pk is None:
            return "-"
        notes = registry.admin_notes(obj)
        if not notes:
            return "-"
        return format_html_join(mark_safe("<br>"), "{}: {}", notes)

    @admin.action(permissions=["change"], description=_("Test the connection (log in and look around)"))
    def test_connection(self, request, queryset):
        for account in queryset:
            self._report(request, account, gettext("connection test"), lambda: control.test_connection(account))

    @admin.action(permissions=["change"], description=_("Sync terminals / extensions from the PBX"))
    def sync_terminals(self, request, queryset):
        def sync(account):
            seen, deactivated = control.sync_terminals(account)
            return gettext("%(seen)s terminals listed by the PBX, %(deactivated)s no longer listed (deactivated)") % {
                "seen": seen, "deactivated": deactivated}

        for account in queryset:
            self._report(request, account, gettext("terminal sync"), lambda: sync(account))

    @admin.action(permissions=["change"], description=_("Restart listeners (reconnect their sockets)"))
    def restart_listeners(self, request, queryset):
        for account in queryset:
            self._report(request, account, gettext("restart"), lambda: gettext("%(count)s listeners restarting") % {
                "count": control.restart_listeners(account)})

    def _report(self, request, account, what, operation):
        try:
            result = operation()
        except ProviderError as exc:
            kind = gettext("permanent: fix the account") if exc.permanent else gettext("temporary: will be retried")
            self.message_user(request, gettext("%(account)s: %(what)s failed (%(kind)s): %(error)s") % {
                "account": account.name, "what": what, "kind": kind, "error": exc}, messages.ERROR)
        else:
            self.message_user(request, gettext("%(account)s: %(what)s OK: %(result)s") % {
                "account": account.name, "what": what, "result": result}, messages.SUCCESS)


@admin.register(Terminal)
class TerminalAdmin(admin.ModelAdmin):
    list_display = ("__str__", "account", "pbx_id", "extension", "device_model", "agent", "active", "synced_at")
    list_filter = ("account", "active", "device_model")
    search_fields = ("pbx_id", "extension", "label", "agent__user__username")
    list_select_related = ("account", "agent__user")
    autocomplete_fields = ("agent",)
    readonly_fields = ("synced_at",)


@admin.register(Listener)
class ListenerAdmin(admin.ModelAdmin):
    list_display = ("name", "account", "terminal", "state", "owner", "connected_since", "last_event_at", "reconnects", "last_error")
    list_filter = ("state", "account")
    search_fields = ("name", "owner", "account__name")
    list_select_related = ("account", "terminal")
    readonly_fields = ("state", "owner", "connected_since", "last_event_at", "last_error", "reconnects", "updated_at")


class CallEventInline(admin.TabularInline):
    model = CallEvent
    extra = 0
    fields = ("received_at", "kind", "payload", "dedupe_key")
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


# The normalised end causes (telephony.updates) as people read them; "swept" marks the calls the hub ended
# itself because the PBX said nothing more about them (telephony.sweep).
END_CAUSE_LABELS = {
    u.END_HANGUP: _("Hung up"),
    u.END_NO_ANSWER: _("No answer"),
    u.END_CANCELLED: _("Cancelled by the caller"),
    u.END_BUSY: pgettext_lazy("end cause", "Busy"),  # the line was busy: not the agent status "Busy"
    u.END_REJECTED: _("Rejected"),
    u.END_TRANSFERRED: _("Transferred"),
    u.END_ANSWERED_ELSEWHERE: _("Answered elsewhere"),
    u.END_UNAVAILABLE: _("Unavailable"),
    u.END_FAILED: _("Failed"),
    u.END_SWEPT: _("Swept (no news from the PBX)"),
}


class EndCauseFilter(admin.SimpleListFilter):
    title = _("end cause")
    parameter_name = "end_cause"

    def lookups(self, request, model_admin):
        return list(END_CAUSE_LABELS.items())

    def queryset(self, request, queryset):
        return queryset.filter(end_cause=self.value()) if self.value() else queryset


@admin.register(Call)
class CallAdmin(admin.ModelAdmin):
    """Calls are written by the PBX event path only: the admin reads them."""

    list_display = (
        "created_at", "direction", "state", "remote_number_e164", "remote_label", "agent", "account",
        "talking_ms", "end_cause_label", "crm_sync_state",
    )
    list_filter = ("state", "direction", "crm_sync_state", "account", EndCauseFilter)
    search_fields = ("pbx_call_id", "remote_number_e164", "remote_number_raw", "remote_label", "agent__user__username")
    list_select_related = ("account", "agent__user")
    date_hierarchy = "created_at"
    inlines = [CallEventInline]

    @admin.display(description=_("end cause"), ordering="end_cause")
    def end_cause_label(self, obj):
        return END_CAUSE_LABELS.get(obj.end_cause, obj.end_cause) or "-"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(CallEvent)
class CallEventAdmin(admin.ModelAdmin):
    list_display = ("received_at", "kind", "call", "dedupe_key")
    list_filter = ("kind",)
    search_fields = ("dedupe_key", "call__pbx_call_id")
    list_select_related = ("call",)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
