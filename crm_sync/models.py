import secrets
import zoneinfo

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone
from django.utils.crypto import salted_hmac

from ctihub.lib.phones import UnusablePhoneNumber, to_e164
from ctihub.lib.secrets import EncryptedTextField


def new_client_id() -> str:
    return secrets.token_urlsafe(24)


CLIENT_ID_DIGEST_SALT = "ctihub.crm_sync.RetailCrmIntegration.client_id"


def client_id_digests(client_id: str) -> list[str]:
    """HMAC-SHA256 of a clientId under each FIELD_ENCRYPTION_KEY, the newest key first.

    Keyed with the field keys rather than SECRET_KEY because they already
    rotate with the old key kept after the new one: a lookup tries every key, so
    rotating them does not lock retailCRM out (the row is re-keyed on its next
    lookup). Without a key the digest cannot be computed from a guessed clientId,
    so neither a database dump nor a lookup's timing says anything about one.
    """
    return [salted_hmac(CLIENT_ID_DIGEST_SALT, client_id, secret=key, algorithm="sha256").hexdigest()
            for key in settings.FIELD_ENCRYPTION_KEYS]


def check_time_zone(value: str) -> None:
    if not value:
        return
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValidationError(f"{value!r} is not a time zone name (e.g. Europe/Moscow)") from None


class RetailCrmIntegration(models.Model):
    """A retailCRM instance that ctihub registers with as a telephony module.

    ``client_id`` is what retailCRM sends back on makeCallUrl and
    changeUserStatusUrl, so it identifies this integration on those requests:
    it is a credential, encrypted at rest like the API key. It is found by
    ``client_id_digest`` (a keyed HMAC, unique and indexed, kept in step by
    ``save``), never by filtering on ``client_id`` itself: an encrypted value
    never compares equal. ``accounts`` limits which PBX accounts
    feed this CRM (none selected means all). ``not_exist_*`` are what
    retailCRM answered at the last registration: codes and shops it does not
    know, shown to the admin.
    """

    name = models.CharField(max_length=100, unique=True)
    crm_url = models.URLField("retailCRM URL", max_length=300, help_text="e.g. https://example.retailcrm.ru")
    api_key = EncryptedTextField("API key")
    module_code = models.SlugField(max_length=100, default="ctihub", help_text="The integration module's code.")
    client_id = EncryptedTextField(
        "client id", blank=True, default=new_client_id,
        help_text="retailCRM's credential on ctihub's endpoints, sent to it on registration.",
    )
    client_id_digest = models.CharField(max_length=64, unique=True, editable=False)
    enabled = models.BooleanField(default=True)
    manager_routing = models.BooleanField(
        "route to the responsible manager",
        default=False,
        help_text="Ask retailCRM for the customer's manager and redirect shared-line calls to them.",
    )
    accounts = models.ManyToManyField(
        "telephony.PbxAccount", blank=True, related_name="crm_integrations", help_text="None selected: all accounts."
    )
    shared_lines = models.ManyToManyField(
        "telephony.Terminal",
        blank=True,
        related_name="+",
        help_text="ACD or switchboard extensions: their incoming calls go to the customer's responsible manager "
        "when routing is on.",
    )
    time_zone = models.CharField(
        max_length=64,
        blank=True,
        validators=[check_time_zone],
        help_text="The retailCRM account's time zone (e.g. Europe/Moscow): call dates are sent in it. "
        "Blank: the hub's TIME_ZONE.",
    )
    registered_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    not_exist_user_ids = models.JSONField(default=list, blank=True)
    not_exist_site_codes = models.JSONField(default=list, blank=True)

    class Meta:
        verbose_name = "retailCRM integration"

    def __str__(self):
        return self.name

    def save(self, *args, **kwargs):
        if not self.client_id:
            self.client_id = new_client_id()
        self.client_id_digest = client_id_digests(self.client_id)[0]
        update_fields = kwargs.get("update_fields")
        if update_fields is not None and "client_id" in update_fields:
            kwargs["update_fields"] = {*update_fields, "client_id_digest"}
        super().save(*args, **kwargs)

    @property
    def client_id_fingerprint(self) -> str:
        """Tells two integrations apart in the admin without showing any of the clientId."""
        return self.client_id_digest[:10]


class ExternalPhone(models.Model):
    """A shop's public number: calls to it are shown as that shop in retailCRM."""

    integration = models.ForeignKey(RetailCrmIntegration, on_delete=models.CASCADE, related_name="external_phones")
    site_code = models.CharField("retailCRM site code", max_length=100)
    phone = models.CharField(max_length=32, help_text="E.164, e.g. +74999999999")

    class Meta:
        ordering = ["site_code"]
        constraints = [models.UniqueConstraint(fields=["integration", "phone"], name="external_phone_unique")]

    def __str__(self):
        return f"{self.site_code}: {self.phone}"

    def clean(self):
        try:
            self.phone = to_e164(self.phone)
        except UnusablePhoneNumber as exc:
            raise ValidationError({"phone": str(exc)}) from None


class CrmCallSync(models.Model):
    """What has been sent to one retailCRM about one call: the durable record behind "exactly once".

    Events: ``in_event_sent_at`` and ``hangup_event_sent_at`` are written only
    after retailCRM accepted the event, and a worker sends only while it holds
    the row's events claim (``events_claimed_until``/``events_claim``, taken
    with a conditional UPDATE), so two workers never send the same event.
    ``events_skipped`` says why a call gets no events at all (nobody to show
    it to, too late to be useful, refused by retailCRM).

    Upload outbox: a finished call enters it (``outbox_at``) and leaves it when
    retailCRM has it (``uploaded_at``). Rows are claimed in batches with
    ``SELECT ... FOR UPDATE SKIP LOCKED``; a failed batch waits until
    ``upload_next_at``. A missed call that may get a voicemail is not due
    before ``upload_next_at`` either: it is looked at again every few seconds
    until the message is there or ``record_wait_until`` passed, then uploaded
    once (with its ``recordUrl`` if the message came). The upload carries ``externalId``, so a batch sent again
    after a crash comes back as ``duplicateCalls`` instead of twice in retailCRM.

    Routing: what the responsible-manager lookup answered (shown on the card)
    and what ctihub did with it.
    """

    class Routing(models.TextChoices):
        NONE = "", "Not routed"
        LOOKING = "looking", "Asking retailCRM"
        REDIRECTED = "redirected", "Redirected to the manager"
        RANG_AS_USUAL = "as_usual", "Rang as usual"
        FAILED = "failed", "Redirect failed"

    integration = models.ForeignKey(RetailCrmIntegration, on_delete=models.CASCADE, related_name="call_syncs")
    call = models.ForeignKey("telephony.Call", on_delete=models.CASCADE, related_name="crm_syncs")
    created_at = models.DateTimeField(default=timezone.now)

    in_event_sent_at = models.DateTimeField("in/out event sent at", null=True, blank=True)
    hangup_event_sent_at = models.DateTimeField(null=True, blank=True)
    events_skipped = models.CharField(max_length=300, blank=True)
    events_claimed_until = models.DateTimeField(null=True, blank=True)
    events_claim = models.CharField(max_length=32, blank=True)
    # Set just before an event goes out, cleared once retailCRM answered. Still set
    # later means the sender died or lost the answer: the event is then taken as
    # delivered, never sent twice (a pop-up shown twice is worse than a lost one).
    events_in_flight = models.CharField(max_length=8, blank=True)
    events_attempts = models.PositiveIntegerField(default=0)
    events_next_at = models.DateTimeField(null=True, blank=True)
    site_code = models.CharField(max_length=100, blank=True, help_text="The shop the call is shown as.")
    external_phone = models.CharField(max_length=32, blank=True)

    outbox_at = models.DateTimeField(null=True, blank=True)
    uploaded_at = models.DateTimeField(null=True, blank=True)
    upload_skipped = models.CharField(max_length=300, blank=True)
    upload_claimed_until = models.DateTimeField(null=True, blank=True)
    upload_claim = models.CharField(max_length=32, blank=True)
    upload_attempts = models.PositiveIntegerField(default=0)
    upload_next_at = models.DateTimeField(null=True, blank=True)
    record_wait_until = models.DateTimeField(
        null=True, blank=True,
        help_text="A missed call whose caller may be leaving a voicemail: its upload waits for the message "
        "until then at most.",
    )
    was_duplicate = models.BooleanField(default=False, help_text="retailCRM already had this call when it was sent.")

    routing = models.CharField(max_length=12, choices=Routing.choices, blank=True, default=Routing.NONE)
    routed_agent = models.ForeignKey(
        "accounts.Agent", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    looked_up_at = models.DateTimeField(null=True, blank=True)
    crm_manager = models.JSONField(null=True, blank=True)
    crm_customer = models.JSONField(null=True, blank=True)
    crm_links = models.JSONField(null=True, blank=True)

    last_error = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "call sent to retailCRM"
        verbose_name_plural = "calls sent to retailCRM"
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["integration", "call"], name="crm_call_sync_unique")]
        indexes = [
            models.Index(
                fields=["integration", "upload_next_at"],
                name="crm_call_sync_outbox",
                condition=models.Q(outbox_at__isnull=False, uploaded_at__isnull=True, upload_skipped=""),
            ),
            models.Index(fields=["looked_up_at"], name="crm_call_sync_lookup"),
            # The last upload of an integration (the admin's health, crm_sync.health): one index step.
            models.Index(fields=["integration", "uploaded_at"], name="crm_call_sync_uploaded"),
        ]

    def __str__(self):
        return f"call {self.call_id} -> {self.integration_id}"
