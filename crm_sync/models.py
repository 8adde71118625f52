import secrets
import zoneinfo

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone
from django.utils.crypto import salted_hmac
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

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
        raise ValidationError(_("%(value)s is not a time zone name (e.g. Europe/Moscow)"),
                              params={"value": repr(value)[:80]}) from None


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

    name = models.CharField(_("name"), max_length=100, unique=True)
    crm_url = models.URLField(_("retailCRM URL"), max_length=300, help_text=_("e.g. https://example.retailcrm.ru"))
    api_key = EncryptedTextField(_("API key"))
    module_code = models.SlugField(_("module code"), max_length=100, default="ctihub", help_text=_("The integration module's code."))
    client_id = EncryptedTextField(
        _("client id"), blank=True, default=new_client_id,
        help_text=_("retailCRM's credential on ctihub's endpoints, sent to it on registration."),
    )
    client_id_digest = models.CharField(_("client id digest"), max_length=64, unique=True, editable=False)
    enabled = models.BooleanField(_("enabled"), default=True)
    manager_routing = models.BooleanField(
        _("route to the responsible manager"),
        default=False,
        help_text=_("Ask retailCRM for the customer's manager and redirect shared-line calls to them."),
    )
    accounts = models.ManyToManyField(
        "telephony.PbxAccount", verbose_name=_("accounts"), blank=True, related_name="crm_integrations", help_text=_("None selected: all accounts.")
    )
    shared_lines = models.ManyToManyField(
        "telephony.Terminal", verbose_name=_("shared lines"),
        blank=True,
        related_name="+",
        help_text=_("ACD or switchboard extensions: their incoming calls go to the customer's responsible manager "
        "when routing is on."),
    )
    time_zone = models.CharField(
        _("time zone"), max_length=64,
        blank=True,
        validators=[check_time_zone],
        help_text=_("The retailCRM account's time zone (e.g. Europe/Moscow): call dates are sent in it. "
        "Blank: the hub's TIME_ZONE."),
    )
    registered_at = models.DateTimeField(_("registered at"), null=True, blank=True)
    last_error = models.TextField(_("last error"), blank=True)
    not_exist_user_ids = models.JSONField(_("not exist user ids"), default=list, blank=True)
    not_exist_site_codes = models.JSONField(_("not exist site codes"), default=list, blank=True)
    site_names = models.JSONField(
        _("shop names"), default=dict, blank=True, editable=False,
        help_text=_("retailCRM's shops, code to name, read when the module is registered."),
    )

    class Meta:
        verbose_name_plural = _("retailCRM integrations")
        verbose_name = _("retailCRM integration")

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

    integration = models.ForeignKey(RetailCrmIntegration, verbose_name=_("integration"), on_delete=models.CASCADE, related_name="external_phones")
    site_code = models.CharField(_("retailCRM site code"), max_length=100)
    phone = models.CharField(_("phone"), max_length=32, help_text=_("E.164, e.g. +74999999999"))

    class Meta:
        verbose_name = _("external phone")
        verbose_name_plural = _("external phones")
        ordering = ["site_code"]
        constraints = [models.UniqueConstraint(fields=["integration", "phone"], name="external_phone_unique")]

    def __str__(self):
        return f"{self.site_code}: {self.phone}"

    def clean(self):
        try:
            self.phone = to_e164(self.phone)
        except UnusablePhoneNumber:
            # The admin's words, in the admin's language (the library's reason is for logs and the API).
            raise ValidationError({"phone": ValidationError(
                _("%(value)s is not a phone number: enter it with its country code, e.g. +79121234567"),
                params={"value": repr(self.phone)[:80]})}) from None


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
        NONE = "", _("Not routed")
        LOOKING = "looking", _("Asking retailCRM")
        REDIRECTED = "redirected", _("Redirected to the manager")
        RANG_AS_USUAL = "as_usual", _("Rang as usual")
        FAILED = "failed", _("Redirect failed")

    integration = models.ForeignKey(RetailCrmIntegration, verbose_name=_("integration"), on_delete=models.CASCADE, related_name="call_syncs")
    call = models.ForeignKey("telephony.Call", verbose_name=_("call"), on_delete=models.CASCADE, related_name="crm_syncs")
    created_at = models.DateTimeField(_("created at"), default=timezone.now)

    in_event_sent_at = models.DateTimeField(_("in/out event sent at"), null=True, blank=True)
    hangup_event_sent_at = models.DateTimeField(_("hangup event sent at"), null=True, blank=True)
    events_skipped = models.CharField(_("events skipped"), max_length=300, blank=True)
    events_claimed_until = models.DateTimeField(_("events claimed until"), null=True, blank=True)
    events_claim = models.CharField(_("events claim"), max_length=32, blank=True)
    # Set just before an event goes out, cleared once retailCRM answered. Still set
    # later means the sender died or lost the answer: the event is then taken as
    # delivered, never sent twice (a pop-up shown twice is worse than a lost one).
    events_in_flight = models.CharField(_("events in flight"), max_length=8, blank=True)
    events_attempts = models.PositiveIntegerField(_("events attempts"), default=0)
    events_next_at = models.DateTimeField(_("events next at"), null=True, blank=True)
    site_code = models.CharField(_("site code"), max_length=100, blank=True, help_text=_("The shop the call is shown as."))
    external_phone = models.CharField(_("external phone"), max_length=32, blank=True)

    outbox_at = models.DateTimeField(_("outbox at"), null=True, blank=True)
    uploaded_at = models.DateTimeField(_("uploaded at"), null=True, blank=True)
    upload_skipped = models.CharField(_("upload skipped"), max_length=300, blank=True)
    upload_claimed_until = models.DateTimeField(_("upload claimed until"), null=True, blank=True)
    upload_claim = models.CharField(_("upload claim"), max_length=32, blank=True)
    upload_attempts = models.PositiveIntegerField(_("upload attempts"), default=0)
    upload_next_at = models.DateTimeField(_("upload next at"), null=True, blank=True)
    record_wait_until = models.DateTimeField(
        _("record wait until"), null=True, blank=True,
        help_text=_("A missed call whose caller may be leaving a voicemail: its upload waits for the message "
        "until then at most."),
    )
    was_duplicate = models.BooleanField(_("was duplicate"), default=False, help_text=_("retailCRM already had this call when it was sent."))

    routing = models.CharField(_("routing"), max_length=12, choices=Routing.choices, blank=True, default=Routing.NONE)
    routed_agent = models.ForeignKey(
        "accounts.Agent", verbose_name=_("routed agent"), on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    looked_up_at = models.DateTimeField(_("looked up at"), null=True, blank=True)
    crm_manager = models.JSONField(_("crm manager"), null=True, blank=True)
    crm_customer = models.JSONField(_("crm customer"), null=True, blank=True)
    crm_links = models.JSONField(_("crm links"), null=True, blank=True)

    last_error = models.TextField(_("last error"), blank=True)
    last_error_at = models.DateTimeField(_("last error at"), null=True, blank=True)

    class Meta:
        verbose_name = _("call sent to retailCRM")
        verbose_name_plural = _("calls sent to retailCRM")
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
        return gettext("call %(call)s -> integration %(integration)s") % {"call": self.call_id,
                                                                          "integration": self.integration_id}
