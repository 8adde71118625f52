from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

DIALLING_TERMINAL_NOT_OWN = _(
    "Choose one of this agent's own active terminals: a terminal is given to an agent on the terminal's page."
)


class Agent(models.Model):
    """A person who takes calls (or supervises those who do).

    Links a Django user to the retailCRM side (``extension_code`` is the
    "additional code" retailCRM dials with, ``retailcrm_user_id`` its user id)
    and carries the status retailCRM and the console set (free, busy, dinner,
    break). The terminals an agent uses point here (``Terminal.agent``), which is
    how a call finds the one console it pops on. Supervisors see every call.
    ``dialling_terminal`` is the one of them its calls are placed from (the
    console's dial and retailCRM's click-to-call alike); empty, or no longer
    usable, a fixed rule picks one (``telephony.control.dialling_terminal``).
    """

    class Status(models.TextChoices):
        FREE = "free", _("Free")
        BUSY = "busy", _("Busy")
        DINNER = "dinner", _("Dinner")
        BREAK = "break", _("Break")

    user = models.OneToOneField(settings.AUTH_USER_MODEL, verbose_name=_("user"), on_delete=models.CASCADE, related_name="agent")
    extension_code = models.CharField(
        _("extension code"), max_length=32, blank=True, help_text=_("The code retailCRM knows this agent by (its 'additional code').")
    )
    retailcrm_user_id = models.CharField(_("retailCRM user id"), max_length=32, blank=True)
    status = models.CharField(_("status"), max_length=16, choices=Status.choices, default=Status.FREE)
    status_changed_at = models.DateTimeField(_("status changed at"), default=timezone.now)
    is_supervisor = models.BooleanField(_("is supervisor"), default=False, help_text=_("Sees every call and the wallboard."))
    # The console's alerts for a ringing call, switched in the console and kept here (not in the browser) so
    # they follow the agent to another machine. The browser's own permission is asked for apart, per browser.
    desktop_notifications = models.BooleanField(
        _("desktop notifications"), default=True, help_text=_("The console shows a desktop notification when a call rings and its tab is hidden.")
    )
    ring_sound = models.BooleanField(_("ring sound"), default=False, help_text=_("The console plays a ring while a call rings."))
    # By name: accounts imports no telephony module (telephony's Terminal.agent points back here).
    dialling_terminal = models.ForeignKey(
        "telephony.Terminal", verbose_name=_("dialling terminal"),
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text=_("The terminal this agent's calls are placed from, from the console and from retailCRM. One of "
        "the agent's own active terminals. Blank: one on an account that can also control calls (myRCC, Telepo) "
        "before one that can only dial, then by account name."),
    )

    class Meta:
        verbose_name = _("agent")
        verbose_name_plural = _("agents")
        ordering = ["user__username"]
        constraints = [
            models.UniqueConstraint(
                fields=["extension_code"], condition=~models.Q(extension_code=""), name="agent_unique_extension_code"
            ),
            models.UniqueConstraint(
                fields=["retailcrm_user_id"],
                condition=~models.Q(retailcrm_user_id=""),
                name="agent_unique_retailcrm_user_id",
            ),
        ]

    def clean(self):
        super().clean()
        terminal = self.dialling_terminal if self.dialling_terminal_id else None
        if terminal is not None and (self.pk is None or terminal.agent_id != self.pk or not terminal.active):
            raise ValidationError({"dialling_terminal": DIALLING_TERMINAL_NOT_OWN})

    def __str__(self):
        full_name = self.user.get_full_name()
        code = self.extension_code or gettext("no code")  # outside the f-string, where makemessages finds it
        return f"{full_name or self.user.username} ({code})"
