from django.contrib import admin, messages
from django.db import transaction
from django.utils.html import format_html_join
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from crm_sync import domain as crm_domain
from crm_sync.models import CrmCallSync, ExternalPhone, RetailCrmIntegration
from crm_sync.retailcrm.client import RetailCrmError
from ctihub.lib.secrets import secret_form_for


class IntegrationForm(secret_form_for(RetailCrmIntegration, ("api_key", "client_id"))):
    """The API key and the clientId are write-only; a blank clientId on a new integration is generated."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        field = self.fields["client_id"]
        field.required = False
        if not (self.instance.pk and self.instance.client_id):
            field.help_text = _("retailCRM's credential on our endpoints. Leave blank to generate one; "
                                "stored encrypted, never shown again.")


class ExternalPhoneInline(admin.TabularInline):
    model = ExternalPhone
    extra = 1


@admin.register(RetailCrmIntegration)
class RetailCrmIntegrationAdmin(admin.ModelAdmin):
    form = IntegrationForm
    list_display = ("name", "crm_url", "module_code", "enabled", "manager_routing", "registered_at", "last_error")
    list_filter = ("enabled", "manager_routing")
    search_fields = ("name", "crm_url", "module_code")
    filter_horizontal = ("accounts", "shared_lines")
    readonly_fields = ("client_id_hint", "registered_at", "last_error", "unknown_to_retailcrm", "outbox")
    fieldsets = (
        (None, {"fields": ("name", "crm_url", "api_key", "client_id", "module_code", "enabled", "time_zone")}),
        (_("Calls"), {"fields": ("accounts", "manager_routing", "shared_lines")}),
        (_("Registration in retailCRM"), {
            "fields": ("client_id_hint", "registered_at", "last_error", "unknown_to_retailcrm", "outbox"),
        }),
    )
    inlines = [ExternalPhoneInline]
    actions = ["register_module"]

    @admin.display(description=_("client id fingerprint"))
    def client_id_hint(self, obj):
        """Not a single character of the clientId: a fingerprint of its keyed digest tells two apart."""
        if not obj.client_id_digest:
            return "-"
        return gettext("%(fingerprint)s (the clientId itself is sent to retailCRM on registration)") % {
            "fingerprint": obj.client_id_fingerprint}

    @admin.display(description=_("retailCRM does not know"))
    def unknown_to_retailcrm(self, obj):
        lines = []
        if obj.not_exist_user_ids:
            lines.append((gettext("user ids (fix the agents' retailCRM user id)"), ", ".join(obj.not_exist_user_ids)))
        if obj.not_exist_site_codes:
            lines.append((gettext("site codes (fix the external phones)"), ", ".join(obj.not_exist_site_codes)))
        if not lines:
            return gettext("nothing") if obj.registered_at else "-"
        return format_html_join("", "<div>{}: <strong>{}</strong></div>", lines)

    @admin.display(description=_("calls waiting for upload"))
    def outbox(self, obj):
        return crm_domain.outbox_size(obj.pk) if obj.pk else 0

    @admin.action(permissions=["change"], description=_("Register / update the telephony module in retailCRM"))
    def register_module(self, request, queryset):
        for integration in queryset:
            try:
                crm_domain.register_integration(integration)
            except RetailCrmError as exc:
                self.message_user(request, f"{integration}: {exc}", messages.ERROR)
                continue
            unknown = []
            if integration.not_exist_user_ids:
                unknown.append(gettext("unknown user ids %(ids)s") % {"ids": ", ".join(integration.not_exist_user_ids)})
            if integration.not_exist_site_codes:
                unknown.append(gettext("unknown site codes %(codes)s") % {
                    "codes": ", ".join(integration.not_exist_site_codes)})
            if unknown:
                self.message_user(request, gettext("%(integration)s: registered, but retailCRM reports %(unknown)s") % {
                    "integration": integration, "unknown": "; ".join(unknown)}, messages.WARNING)
            else:
                self.message_user(request, gettext("%(integration)s: registered in retailCRM") % {
                    "integration": integration}, messages.SUCCESS)

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        integration = form.instance
        if integration.enabled or integration.registered_at:
            # URLs, codes, shops or the active flag may have changed: retailCRM's copy must follow.
            from crm_sync.tasks import queue_registration

            transaction.on_commit(lambda: queue_registration(integration.pk))


@admin.register(CrmCallSync)
class CrmCallSyncAdmin(admin.ModelAdmin):
    """What was sent to retailCRM about each call: read-only, written by the sync."""

    list_display = ("call", "integration", "in_event_sent_at", "hangup_event_sent_at", "uploaded_at", "routing",
                    "events_skipped", "upload_skipped", "last_error")
    list_filter = ("integration", "routing", ("uploaded_at", admin.EmptyFieldListFilter))
    search_fields = ("call__remote_number_e164", "call__pbx_call_id", "last_error")
    list_select_related = ("call", "integration")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
