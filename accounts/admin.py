from django import forms
from django.contrib import admin

from accounts.models import DIALLING_TERMINAL_NOT_OWN, Agent


class AgentForm(forms.ModelForm):
    """Offers as dialling terminal only the agent's own active terminals, named with their account."""

    class Meta:
        model = Agent
        fields = "__all__"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        field = self.fields.get("dialling_terminal")
        if field is None:
            return
        own = field.queryset.none()
        if self.instance.pk:
            own = field.queryset.filter(agent_id=self.instance.pk, active=True)
        field.queryset = own.select_related("account").order_by("account__name", "extension", "pbx_id")
        field.label_from_instance = lambda terminal: f"{terminal} ({terminal.account.name})"
        field.error_messages["invalid_choice"] = DIALLING_TERMINAL_NOT_OWN
        # A terminal made here would be no one's yet: terminals come from the PBX (the accounts' "Sync terminals").
        field.widget.can_add_related = False


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    form = AgentForm
    list_display = (
        "user", "extension_code", "retailcrm_user_id", "status", "status_changed_at", "is_supervisor",
        "dialling_terminal",
    )
    list_filter = ("status", "is_supervisor")
    search_fields = ("user__username", "user__first_name", "user__last_name", "user__email", "extension_code")
    list_select_related = ("user", "dialling_terminal")
    autocomplete_fields = ("user",)
    readonly_fields = ("status_changed_at",)
