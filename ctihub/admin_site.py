"""The admin site: titled ctihub, its index opening on the health of every PBX account, listener and
plug-in (the retailCRM integrations), each row linking to the object and, when it fails, to the
action that fixes it.

The sections come from ``telephony.health.sections()`` (the core's and those the apps above register);
this module only decides who sees which (whoever may view the section's model in the admin) and which
fixes they are offered (whoever may change the fix's model).
"""

from __future__ import annotations

from django.contrib.admin import AdminSite
from django.utils.translation import gettext_lazy as _


class CtihubAdminSite(AdminSite):
    site_header = "ctihub"  # the brand, in every language
    site_title = _("ctihub admin")
    index_title = _("ctihub at a glance")
    index_template = "admin/ctihub_index.html"

    def index(self, request, extra_context=None):
        context = {"health_sections": self.health_sections(request), **(extra_context or {})}
        return super().index(request, extra_context=context)

    def health_sections(self, request) -> list[dict]:
        from telephony.health import sections

        shown = []
        for section in sections():
            model_admin = self._registry.get(section.model)
            if model_admin is None:  # a plug-in that failed before naming its model: for superusers only
                if request.user.is_superuser:
                    shown.append({"section": section, "rows": []})
                continue
            if not model_admin.has_view_or_change_permission(request):
                continue
            rows = [{"row": row, "fix": row.fix if row.fix and self._may_fix(request, row.fix) else None}
                    for row in section.rows]
            shown.append({"section": section, "rows": rows})
        return shown

    def _may_fix(self, request, fix) -> bool:
        model_admin = self._registry.get(fix.model)
        return model_admin is not None and model_admin.has_change_permission(request)
