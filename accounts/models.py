from django.conf import settings
from django.db import models
from django.utils import timezone


class Agent(models.Model):
    """A person who takes calls (or supervises those who do).

    Links a Django user to the retailCRM side (``extension_code`` is the
    "additional code" retailCRM dials with, ``retailcrm_user_id`` its user id)
    and carries the status retailCRM and the console set (free, busy, dinner,
    break). The terminals an agent uses point here (``Terminal.agent``), which is
    how a call finds the one console it pops on. Supervisors see every call.
    """

    class Status(models.TextChoices):
        FREE = "free", "Free"
        BUSY = "busy", "Busy"
        DINNER = "dinner", "Dinner"
        BREAK = "break", "Break"

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="agent")
    extension_code = models.CharField(
        max_length=32, blank=True, help_text="The code retailCRM knows this agent by (its 'additional code')."
    )
    retailcrm_user_id = models.CharField("retailCRM user id", max_length=32, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.FREE)
    status_changed_at = models.DateTimeField(default=timezone.now)
    is_supervisor = models.BooleanField(default=False, help_text="Sees every call and the wallboard.")

    class Meta:
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

    def __str__(self):
        full_name = self.user.get_full_name()
        return f"{full_name or self.user.username} ({self.extension_code or 'no code'})"
