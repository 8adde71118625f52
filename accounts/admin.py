from django.contrib import admin

from accounts.models import Agent


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    list_display = ("user", "extension_code", "retailcrm_user_id", "status", "status_changed_at", "is_supervisor")
    list_filter = ("status", "is_supervisor")
    search_fields = ("user__username", "user__first_name", "user__last_name", "user__email", "extension_code")
    list_select_related = ("user",)
    autocomplete_fields = ("user",)
    readonly_fields = ("status_changed_at",)
