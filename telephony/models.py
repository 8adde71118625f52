from django.core.validators import URLValidator
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from ctihub.lib.secrets import EncryptedTextField
from telephony.providers import registry

WS_URL_VALIDATOR = URLValidator(schemes=["ws", "wss"])


class _Kinds:
    """``PbxAccount.Kind``: each registered provider's kind as an attribute of its name in capitals."""

    def __getattr__(self, name: str) -> str:
        kind = name.lower()
        if name.isupper() and kind in registry.kinds():
            return kind
        raise AttributeError(f"no PBX kind {kind!r} is registered (is its provider in INSTALLED_APPS?)")


class PbxAccount(models.Model):
    """One login on one PBX platform, and the live status of our link to it.

    ``kind`` picks the provider package (``telephony/providers/<kind>/``). Istra
    kinds log in at ``base_url`` (up to and including ``/restletrouter``): myCrm
    and the End User API as an end user, myRCC as an RCC admin of
    ``enterprise``. Telepo uses ``base_url``, ``enterprise`` as its domain, the
    API ticket in ``api_token`` and ``webhook_secret`` to recognise its CRM
    connector webhook. Secrets are encrypted at rest and write-only in the
    admin. The status fields are written by the socket supervisor, never by
    hand.
    """

    #: The registered kinds by name, ``PbxAccount.Kind.TELEPO == "telepo"``: the providers' apps register
    #: them (``telephony.providers.registry``); the core names none.
    Kind = _Kinds()

    class Status(models.TextChoices):
        DISABLED = "disabled", _("Disabled")
        CONNECTING = "connecting", _("Connecting")
        CONNECTED = "connected", _("Connected")
        DEGRADED = "degraded", _("Degraded (retrying)")
        FAILED = "failed", _("Failed (needs an admin)")

    name = models.CharField(_("name"), max_length=100, unique=True)
    kind = models.CharField(_("kind"), max_length=20, choices=registry.kind_choices)
    base_url = models.URLField(
        _("base url"), max_length=300, help_text=_("Istra: https://HOST/restletrouter. Telepo: https://HOST.")
    )
    ws_url = models.CharField(
        _("websocket URL override"),
        max_length=300,
        blank=True,
        validators=[WS_URL_VALIDATOR],
        help_text=_("Leave blank to use ws(s)://HOST/restletrouter/ws-service/<app>."),
    )
    enterprise = models.CharField(
        _("enterprise"), max_length=200, blank=True, help_text=_("myRCC: the enterprise to monitor. Telepo: the organisation's domain.")
    )
    login = models.CharField(_("login"), max_length=200, blank=True, help_text=_("Istra login (without the ENDUSER: prefix)."))
    password = EncryptedTextField(_("password"), blank=True)
    api_token = EncryptedTextField(_("API token"), blank=True, help_text=_("Telepo call-control API ticket."))
    webhook_secret = EncryptedTextField(
        _("webhook secret"), blank=True, help_text=_("Telepo: the secret in the CRM connector webhook URL.")
    )
    ca_bundle = models.TextField(
        _("trusted CA bundle (PEM)"), blank=True, help_text=_("Trust this CA for the PBX's certificate, in addition to the system's.")
    )
    default_region = models.CharField(
        _("default region"), max_length=2, blank=True, help_text=_("Country (ISO 3166, e.g. FR) for numbers the PBX gives without one.")
    )
    enabled = models.BooleanField(_("enabled"), default=True)

    status = models.CharField(_("status"), max_length=16, choices=Status.choices, default=Status.CONNECTING)
    status_since = models.DateTimeField(_("status since"), default=timezone.now)
    last_event_at = models.DateTimeField(_("last event at"), null=True, blank=True)
    last_error = models.TextField(_("last error"), blank=True)
    last_error_at = models.DateTimeField(_("last error at"), null=True, blank=True)
    # Istra suspends an account after too many failed logins in a row (myIstra doc, "Istra Password Policy"):
    # once a login is refused, every process holds its logins with these credentials until an admin saves the
    # account or ISTRA_LOGIN_COOLDOWN_SECONDS pass (telephony.providers.istra.session). Kept here, not in
    # Redis, so the admin shows it next to the status and any save of the account clears it.
    login_refused_at = models.DateTimeField(
        _("login refused at"), null=True, blank=True, help_text=_("Last refused (or re-tried) Istra login.")
    )
    login_refused_reason = models.TextField(_("why the login was refused"), blank=True)
    #: A keyed hash of the refused user name and password: other credentials (a process still holding the
    #: previous password, or new ones) are not held by a refusal of these.
    login_refused_credentials = models.CharField(_("login refused credentials"), max_length=64, blank=True, editable=False)
    # myRCC may move an enterprise to another host with a permanent redirect (301/308): every later request
    # and the websocket go straight there. Cleared when the base URL is edited in the admin.
    redirected_base_url = models.CharField(
        _("moved permanently to"), max_length=300, blank=True,
        help_text=_("Where the PBX said this account's base URL moved permanently (HTTP 301/308)."),
    )
    redirected_at = models.DateTimeField(_("moved at"), null=True, blank=True)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        verbose_name_plural = _("PBX accounts")
        ordering = ["name"]
        verbose_name = _("PBX account")

    def __str__(self):
        return f"{self.name} ({self.get_kind_display()})"


class Terminal(models.Model):
    """A phone terminal (myCrm, End User API), extension (myRCC) or user (Telepo).

    ``pbx_id`` is the PBX's own id, always a string: Istra's 64-bit ids lose
    digits in a float. ``agent`` is who answers it, and so whose console a call
    on it pops on.
    """

    account = models.ForeignKey(PbxAccount, verbose_name=_("account"), on_delete=models.CASCADE, related_name="terminals")
    pbx_id = models.CharField(_("PBX id"), max_length=200)
    extension = models.CharField(_("extension"), max_length=64, blank=True)
    label = models.CharField(_("label"), max_length=200, blank=True)
    device_model = models.CharField(_("device model"), max_length=200, blank=True)
    department = models.CharField(_("department"), max_length=200, blank=True)
    photo_url = models.URLField(_("photo url"), max_length=500, blank=True)
    pstn_numbers = models.JSONField(_("pstn numbers"), default=list, blank=True, help_text=_("E.164 numbers reaching this terminal."))
    agent = models.ForeignKey(
        "accounts.Agent", verbose_name=_("agent"), on_delete=models.SET_NULL, null=True, blank=True, related_name="terminals"
    )
    active = models.BooleanField(_("active"), default=True, help_text=_("False once the PBX stopped listing it."))
    synced_at = models.DateTimeField(_("synced at"), null=True, blank=True)

    class Meta:
        verbose_name = _("terminal")
        verbose_name_plural = _("terminals")
        ordering = ["account", "extension", "pbx_id"]
        constraints = [models.UniqueConstraint(fields=["account", "pbx_id"], name="terminal_unique_pbx_id")]

    def __str__(self):
        return self.label or self.extension or self.pbx_id


class Listener(models.Model):
    """An event subscription held open by a worker: one PBX websocket.

    myCrm has one per terminal; myRCC and the End User API one per account
    (``terminal`` empty). Exactly one worker owns a listener at a time (a Redis
    lease); ``owner`` mirrors that lease for the admin, and the other fields say
    how the socket is doing.
    """

    class State(models.TextChoices):
        IDLE = "idle", _("Idle (waiting for a worker)")
        CONNECTING = "connecting", _("Connecting")
        CONNECTED = "connected", _("Connected")
        BACKOFF = "backoff", _("Reconnecting after an error")
        FAILED = "failed", _("Failed (needs an admin)")
        STOPPED = "stopped", _("Stopped")

    account = models.ForeignKey(PbxAccount, verbose_name=_("account"), on_delete=models.CASCADE, related_name="listeners")
    terminal = models.ForeignKey(Terminal, verbose_name=_("terminal"), on_delete=models.CASCADE, null=True, blank=True, related_name="listeners")
    name = models.CharField(_("name"), max_length=100)
    state = models.CharField(_("state"), max_length=16, choices=State.choices, default=State.IDLE)
    owner = models.CharField(_("owner"), max_length=200, blank=True, help_text=_("The worker holding this socket."))
    connected_since = models.DateTimeField(_("connected since"), null=True, blank=True)
    last_event_at = models.DateTimeField(_("last event at"), null=True, blank=True)
    last_error = models.TextField(_("last error"), blank=True)
    reconnects = models.PositiveIntegerField(_("reconnects"), default=0)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        verbose_name = _("listener")
        verbose_name_plural = _("listeners")
        ordering = ["account", "name"]
        constraints = [models.UniqueConstraint(fields=["account", "name"], name="listener_unique_name")]

    def __str__(self):
        return f"{self.account.name}/{self.name}"


class Call(models.Model):
    """One call as ctihub knows it, whatever PBX it came from.

    Written only by ``telephony.domain`` from normalised call updates, so an
    Istra call and a Telepo call look the same to cards and to the CRM.
    ``pbx_call_id`` is unique per account and kept as the PBX's string.
    ``version`` grows with every applied update, so a browser can drop a card
    update older than the one it shows. ``allowed_actions`` is what the PBX says
    can be done now; ``state_token`` and ``last_seq`` are Telepo's concurrency
    token and webhook sequence number. ``pbx_state`` is a state the PBX named
    that we do not know, shown next to ``state``.
    """

    class Direction(models.TextChoices):
        INBOUND = "in", _("Incoming")
        OUTBOUND = "out", _("Outgoing")

    class State(models.TextChoices):
        RINGING = "ringing", _("Ringing")
        DIALING = "dialing", _("Dialling")
        TALKING = "talking", _("Talking")
        HELD = "held", _("On hold")
        ENDED = "ended", _("Ended")

    class CrmSync(models.TextChoices):
        PENDING = "pending", _("Pending")
        SYNCED = "synced", _("Synced")
        FAILED = "failed", _("Failed (will retry)")
        SKIPPED = "skipped", _("No CRM integration")

    account = models.ForeignKey(PbxAccount, verbose_name=_("account"), on_delete=models.PROTECT, related_name="calls")
    pbx_call_id = models.CharField(_("PBX call id"), max_length=200)
    terminal = models.ForeignKey(Terminal, verbose_name=_("terminal"), on_delete=models.SET_NULL, null=True, blank=True, related_name="calls")
    agent = models.ForeignKey(
        "accounts.Agent", verbose_name=_("agent"), on_delete=models.SET_NULL, null=True, blank=True, related_name="calls"
    )
    direction = models.CharField(_("direction"), max_length=3, choices=Direction.choices)
    is_internal = models.BooleanField(_("is internal"), default=False)
    state = models.CharField(_("state"), max_length=10, choices=State.choices)
    # The PBX's own name for a state it sent that we do not know ("offering"): the call stays live in
    # ``state`` (its last known one), and the card shows both. Empty once a known state arrives.
    pbx_state = models.CharField(
        _("PBX state"), max_length=40, blank=True, help_text=_("A state the PBX sent that ctihub does not know.")
    )
    remote_number_e164 = models.CharField(_("remote number (E.164)"), max_length=32, blank=True)
    remote_number_raw = models.CharField(_("remote number as given"), max_length=200, blank=True)
    remote_label = models.CharField(_("remote label"), max_length=200, blank=True)
    external_phone = models.CharField(_("external phone"), max_length=32, blank=True, help_text=_("The shop's number the call came in on."))
    site_code = models.CharField(_("site code"), max_length=100, blank=True, help_text=_("The retailCRM shop of external_phone."))
    created_at = models.DateTimeField(_("created at"), default=timezone.now)
    answered_at = models.DateTimeField(_("answered at"), null=True, blank=True)
    ended_at = models.DateTimeField(_("ended at"), null=True, blank=True)
    ringing_ms = models.PositiveBigIntegerField(_("ringing ms"), null=True, blank=True)
    talking_ms = models.PositiveBigIntegerField(_("talking ms"), null=True, blank=True)
    end_cause = models.CharField(_("end cause"), max_length=32, blank=True)
    allowed_actions = models.JSONField(_("allowed actions"), default=list, blank=True)
    state_token = models.CharField(_("state token"), max_length=32, blank=True)
    last_seq = models.BigIntegerField(_("last seq"), null=True, blank=True)
    version = models.PositiveIntegerField(_("version"), default=0)
    crm_sync_state = models.CharField(_("crm sync state"), max_length=10, choices=CrmSync.choices, default=CrmSync.PENDING)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        verbose_name = _("call")
        verbose_name_plural = _("calls")
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["account", "pbx_call_id"], name="call_unique_pbx_call_id")]
        indexes = [
            models.Index(fields=["state", "-created_at"], name="call_state_recent"),
            models.Index(fields=["agent", "state"], name="call_agent_state"),
            models.Index(fields=["crm_sync_state", "ended_at"], name="call_crm_sync"),
            # Every supervisor console asks for the calls changed since its last look (its resync).
            models.Index(fields=["updated_at"], name="call_updated"),
            # The wallboard's figures read today's calls (telephony.wallboard): a day's rows, not the history.
            models.Index(fields=["created_at"], name="call_created"),
        ]

    def __str__(self):
        number = self.remote_number_e164 or self.remote_number_raw
        return f"{self.get_direction_display()} {number} ({self.get_state_display()})"

    @property
    def was_answered(self) -> bool:
        return self.answered_at is not None


class CallEvent(models.Model):
    """One PBX frame (or webhook, or snapshot) as received, attached to its call.

    ``dedupe_key`` is unique, built from the account and what identifies the
    frame at the PBX, so storing the same frame twice is impossible: a replayed
    frame or a redelivered webhook is a no-op.
    """

    call = models.ForeignKey(Call, verbose_name=_("call"), on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(_("kind"), max_length=40)
    payload = models.JSONField(_("payload"))
    received_at = models.DateTimeField(_("received at"), default=timezone.now)
    dedupe_key = models.CharField(_("dedupe key"), max_length=255, unique=True)

    class Meta:
        verbose_name = _("call event")
        verbose_name_plural = _("call events")
        ordering = ["received_at", "id"]

    def __str__(self):
        return f"{self.kind} @ {self.received_at:%H:%M:%S}"
