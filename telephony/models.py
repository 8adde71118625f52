from django.core.validators import URLValidator
from django.db import models
from django.utils import timezone

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
        DISABLED = "disabled", "Disabled"
        CONNECTING = "connecting", "Connecting"
        CONNECTED = "connected", "Connected"
        DEGRADED = "degraded", "Degraded (retrying)"
        FAILED = "failed", "Failed (needs an admin)"

    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=20, choices=registry.kind_choices)
    base_url = models.URLField(
        max_length=300, help_text="Istra: https://HOST/restletrouter. Telepo: https://HOST."
    )
    ws_url = models.CharField(
        "websocket URL override",
        max_length=300,
        blank=True,
        validators=[WS_URL_VALIDATOR],
        help_text="Leave blank to use ws(s)://HOST/restletrouter/ws-service/<app>.",
    )
    enterprise = models.CharField(
        max_length=200, blank=True, help_text="myRCC: the enterprise to monitor. Telepo: the organisation's domain."
    )
    login = models.CharField(max_length=200, blank=True, help_text="Istra login (without the ENDUSER: prefix).")
    password = EncryptedTextField(blank=True)
    api_token = EncryptedTextField("API token", blank=True, help_text="Telepo call-control API ticket.")
    webhook_secret = EncryptedTextField(
        blank=True, help_text="Telepo: the secret in the CRM connector webhook URL."
    )
    ca_bundle = models.TextField(
        "trusted CA bundle (PEM)", blank=True, help_text="Trust this CA for the PBX's certificate, in addition to the system's."
    )
    default_region = models.CharField(
        max_length=2, blank=True, help_text="Country (ISO 3166, e.g. FR) for numbers the PBX gives without one."
    )
    enabled = models.BooleanField(default=True)

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.CONNECTING)
    status_since = models.DateTimeField(default=timezone.now)
    last_event_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    # Istra suspends an account after too many failed logins in a row (myIstra doc, "Istra Password Policy"):
    # once a login is refused, every process holds its logins with these credentials until an admin saves the
    # account or ISTRA_LOGIN_COOLDOWN_SECONDS pass (telephony.providers.istra.session). Kept here, not in
    # Redis, so the admin shows it next to the status and any save of the account clears it.
    login_refused_at = models.DateTimeField(
        "login refused at", null=True, blank=True, help_text="Last refused (or re-tried) Istra login."
    )
    login_refused_reason = models.TextField("why the login was refused", blank=True)
    #: A keyed hash of the refused user name and password: other credentials (a process still holding the
    #: previous password, or new ones) are not held by a refusal of these.
    login_refused_credentials = models.CharField(max_length=64, blank=True, editable=False)
    # myRCC may move an enterprise to another host with a permanent redirect (301/308): every later request
    # and the websocket go straight there. Cleared when the base URL is edited in the admin.
    redirected_base_url = models.CharField(
        "moved permanently to", max_length=300, blank=True,
        help_text="Where the PBX said this account's base URL moved permanently (HTTP 301/308).",
    )
    redirected_at = models.DateTimeField("moved at", null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "PBX account"

    def __str__(self):
        return f"{self.name} ({self.get_kind_display()})"


class Terminal(models.Model):
    """A phone terminal (myCrm, End User API), extension (myRCC) or user (Telepo).

    ``pbx_id`` is the PBX's own id, always a string: Istra's 64-bit ids lose
    digits in a float. ``agent`` is who answers it, and so whose console a call
    on it pops on.
    """

    account = models.ForeignKey(PbxAccount, on_delete=models.CASCADE, related_name="terminals")
    pbx_id = models.CharField("PBX id", max_length=200)
    extension = models.CharField(max_length=64, blank=True)
    label = models.CharField(max_length=200, blank=True)
    device_model = models.CharField(max_length=200, blank=True)
    department = models.CharField(max_length=200, blank=True)
    photo_url = models.URLField(max_length=500, blank=True)
    pstn_numbers = models.JSONField(default=list, blank=True, help_text="E.164 numbers reaching this terminal.")
    agent = models.ForeignKey(
        "accounts.Agent", on_delete=models.SET_NULL, null=True, blank=True, related_name="terminals"
    )
    active = models.BooleanField(default=True, help_text="False once the PBX stopped listing it.")
    synced_at = models.DateTimeField(null=True, blank=True)

    class Meta:
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
        IDLE = "idle", "Idle (waiting for a worker)"
        CONNECTING = "connecting", "Connecting"
        CONNECTED = "connected", "Connected"
        BACKOFF = "backoff", "Reconnecting after an error"
        FAILED = "failed", "Failed (needs an admin)"
        STOPPED = "stopped", "Stopped"

    account = models.ForeignKey(PbxAccount, on_delete=models.CASCADE, related_name="listeners")
    terminal = models.ForeignKey(Terminal, on_delete=models.CASCADE, null=True, blank=True, related_name="listeners")
    name = models.CharField(max_length=100)
    state = models.CharField(max_length=16, choices=State.choices, default=State.IDLE)
    owner = models.CharField(max_length=200, blank=True, help_text="The worker holding this socket.")
    connected_since = models.DateTimeField(null=True, blank=True)
    last_event_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    reconnects = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
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
        INBOUND = "in", "Incoming"
        OUTBOUND = "out", "Outgoing"

    class State(models.TextChoices):
        RINGING = "ringing", "Ringing"
        DIALING = "dialing", "Dialling"
        TALKING = "talking", "Talking"
        HELD = "held", "On hold"
        ENDED = "ended", "Ended"

    class CrmSync(models.TextChoices):
        PENDING = "pending", "Pending"
        SYNCED = "synced", "Synced"
        FAILED = "failed", "Failed (will retry)"
        SKIPPED = "skipped", "No CRM integration"

    account = models.ForeignKey(PbxAccount, on_delete=models.PROTECT, related_name="calls")
    pbx_call_id = models.CharField("PBX call id", max_length=200)
    terminal = models.ForeignKey(Terminal, on_delete=models.SET_NULL, null=True, blank=True, related_name="calls")
    agent = models.ForeignKey(
        "accounts.Agent", on_delete=models.SET_NULL, null=True, blank=True, related_name="calls"
    )
    direction = models.CharField(max_length=3, choices=Direction.choices)
    is_internal = models.BooleanField(default=False)
    state = models.CharField(max_length=10, choices=State.choices)
    # The PBX's own name for a state it sent that we do not know ("offering"): the call stays live in
    # ``state`` (its last known one), and the card shows both. Empty once a known state arrives.
    pbx_state = models.CharField(
        "PBX state", max_length=40, blank=True, help_text="A state the PBX sent that ctihub does not know."
    )
    remote_number_e164 = models.CharField("remote number (E.164)", max_length=32, blank=True)
    remote_number_raw = models.CharField("remote number as given", max_length=200, blank=True)
    remote_label = models.CharField(max_length=200, blank=True)
    external_phone = models.CharField(max_length=32, blank=True, help_text="The shop's number the call came in on.")
    site_code = models.CharField(max_length=100, blank=True, help_text="The retailCRM shop of external_phone.")
    created_at = models.DateTimeField(default=timezone.now)
    answered_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    ringing_ms = models.PositiveBigIntegerField(null=True, blank=True)
    talking_ms = models.PositiveBigIntegerField(null=True, blank=True)
    end_cause = models.CharField(max_length=32, blank=True)
    allowed_actions = models.JSONField(default=list, blank=True)
    state_token = models.CharField(max_length=32, blank=True)
    last_seq = models.BigIntegerField(null=True, blank=True)
    version = models.PositiveIntegerField(default=0)
    crm_sync_state = models.CharField(max_length=10, choices=CrmSync.choices, default=CrmSync.PENDING)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
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
        return f"{self.get_direction_display()} {self.remote_number_e164 or self.remote_number_raw} ({self.state})"

    @property
    def was_answered(self) -> bool:
        return self.answered_at is not None


class CallEvent(models.Model):
    """One PBX frame (or webhook, or snapshot) as received, attached to its call.

    ``dedupe_key`` is unique, built from the account and what identifies the
    frame at the PBX, so storing the same frame twice is impossible: a replayed
    frame or a redelivered webhook is a no-op.
    """

    call = models.ForeignKey(Call, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=40)
    payload = models.JSONField()
    received_at = models.DateTimeField(default=timezone.now)
    dedupe_key = models.CharField(max_length=255, unique=True)

    class Meta:
        ordering = ["received_at", "id"]

    def __str__(self):
        return f"{self.kind} @ {self.received_at:%H:%M:%S}"
