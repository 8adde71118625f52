"""ctihub settings: one module, driven by environment variables.

Every variable is listed in ``.env.example``. Nothing set means the embedded
defaults a newcomer needs (SQLite, a Redis the project starts itself, the
built-in simulator); production sets ``DEBUG=false`` and must then provide real
secrets, or the process refuses to start. A malformed value is an error at
import time, never a silent fallback.
"""

from __future__ import annotations

import importlib.util
import os
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlparse

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
if (BASE_DIR / ".env").exists():
    env.read_env(str(BASE_DIR / ".env"))

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def strict_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean; use true or false")


def strict_int(name: str, default: int, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a whole number") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name}={value} must be at least {minimum}")
    return value


DEBUG = strict_bool("DEBUG", True)
VAR_DIR = Path(env.str("CTIHUB_VAR_DIR", default=str(BASE_DIR / "var")))


def _dev_secret(filename: str, make) -> str:
    """A per-checkout secret for development, kept in var/ so restarts reuse it."""
    path = VAR_DIR / filename
    if path.exists():
        return path.read_text().strip()
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    value = make()
    path.write_text(value)
    path.chmod(0o600)
    return value


def _secret(name: str) -> str:
    """A secret as given: django-environ reads a value starting with "$" as the name of another variable,
    so a random key beginning with "$" (about one in fifty of Django's) would silently become empty."""
    return os.environ.get(name, "")


def _required_in_production(name: str, make_dev_value) -> str:
    value = _secret(name)
    if value:
        return value
    if not DEBUG:
        raise ImproperlyConfigured(f"{name} must be set when DEBUG is false")
    return _dev_secret(f"dev-{name.lower()}", make_dev_value)


def _new_secret_key() -> str:
    from django.core.management.utils import get_random_secret_key

    return get_random_secret_key()


def _new_fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


SECRET_KEY = _required_in_production("SECRET_KEY", _new_secret_key)
# Comma-separated Fernet keys, newest first: older ones still decrypt, so keys can rotate.
FIELD_ENCRYPTION_KEYS = [
    k.strip() for k in _required_in_production("FIELD_ENCRYPTION_KEY", _new_fernet_key).split(",") if k.strip()
]

# Not "testserver": Django's test runner adds it for the tests, and a production host never needs it.
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
# The public base URL of this hub: what retailCRM and Telepo are told to call back.
PUBLIC_BASE_URL = env.str("PUBLIC_BASE_URL", default="http://127.0.0.1:8000").rstrip("/")
if urlparse(PUBLIC_BASE_URL).scheme not in ("http", "https"):
    raise ImproperlyConfigured(f"PUBLIC_BASE_URL={PUBLIC_BASE_URL!r} must be an http(s) URL")

# Not "daphne": its app only swaps runserver for an ASGI one, and ctihub is served by `manage.py web` (daphne
# itself). As an app it loaded Twisted into every process, Celery workers included: 0.19 s of CPU each start.
INSTALLED_APPS = [
    "ctihub.apps.CtihubAdminConfig",  # django.contrib.admin, its site ctihub's (ctihub/admin_site.py)
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "channels",
    "axes",
    "csp",
    "ctihub",
    "accounts",
    "telephony",
    # The PBX providers: one line each (telephony/providers/<kind>/apps.py registers the rest).
    "telephony.providers.istra_mycrm",
    "telephony.providers.istra_myrcc",
    "telephony.providers.istra_enduser",
    "telephony.providers.telepo",
    "crm_sync",
]
# The development tools (runall, the demo, the simulator) where the simulator is: a checkout, never the image.
if importlib.util.find_spec("simulator") is not None:
    INSTALLED_APPS.append("simulator")

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # daphne serves no static files itself; WhiteNoise does, compressed and cached.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    # The language: the chooser's cookie (django.views.i18n.set_language), else the browser's Accept-Language.
    # After the session, before CommonMiddleware, as Django's i18n documentation asks.
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    # Last, as django-axes asks: it turns a refused login into the "too many attempts" page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "ctihub.urls"
WSGI_APPLICATION = "ctihub.wsgi.application"
ASGI_APPLICATION = "ctihub.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------
DATABASES = {
    "default": env.db_url("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'ctihub.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    # Web, worker and beat share one SQLite file: wait for a lock instead of failing. A deferred
    # transaction that later writes fails at once with "database is locked" (it cannot wait without
    # deadlocking), so every transaction takes the write lock up front; WAL lets readers go on meanwhile.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        timeout=20, transaction_mode="IMMEDIATE", init_command="PRAGMA journal_mode=WAL;"
    )
else:
    DATABASES["default"]["CONN_MAX_AGE"] = strict_int("DATABASE_CONN_MAX_AGE", 60)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
# The frame path's statements kept prepared by PostgreSQL (telephony.domain): planned once a connection, not at
# every frame, which halved the server's CPU a frame. Off behind a transaction-pooling PgBouncer older than 1.21
# (or without max_prepared_statements): a statement prepared on one server connection is unknown on the next.
DATABASE_PREPARED_STATEMENTS = strict_bool("DATABASE_PREPARED_STATEMENTS", True)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: Celery broker and Channels layer, in every mode ---------------------
REDIS_URL = env.str("REDIS_URL", default="")
EMBEDDED_REDIS = not REDIS_URL
if EMBEDDED_REDIS:
    from ctihub.lib import embedded_redis

    REDIS_URL = embedded_redis.url_for(VAR_DIR)
    # Started lazily by ctihub.redis_url() so that management commands that never
    # touch Redis (migrate, createsuperuser) do not spawn a server.
if urlparse(REDIS_URL).scheme not in ("redis", "rediss", "unix"):
    raise ImproperlyConfigured(f"REDIS_URL={REDIS_URL!r} must be a redis://, rediss:// or unix:// URL")


def _kombu_url(url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme == "unix":
        return f"redis+socket://{parsed.path}"
    return url


CELERY_BROKER_URL = _kombu_url(REDIS_URL)
# kombu's Redis transport, keeping one publishing client per channel (see ctihub/lib/broker.py); a URL that
# names another transport (redis+socket, sentinel) keeps kombu's own.
if urlparse(CELERY_BROKER_URL).scheme in ("redis", "rediss"):
    CELERY_BROKER_TRANSPORT = "ctihub.lib.broker:Transport"
CELERY_RESULT_BACKEND = _kombu_url(REDIS_URL)
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_RESULT_EXPIRES = 3600
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Every task is short (see the design notes); an hour covers the slowest retry.
# "sorted": a worker that consumes several queues takes from them in the order of their names
# (kombu's default is round robin), so CRM_EVENTS_QUEUE, named to sort first, goes before the rest.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600, "queue_order_strategy": "sorted"}
# retailCRM's call events pop its own card for the manager: they must not wait in line behind uploads,
# history backfills or reconciles. Their tasks (and the responsible-manager lookup of a ringing call) go
# to a queue of their own. Every worker consumes every queue unless told otherwise (-Q), the events
# queue first; a dedicated events worker (``-Q call-events``, see README) keeps threads free for them.
CRM_EVENTS_QUEUE = "call-events"
CELERY_TASK_DEFAULT_QUEUE = "celery"
CELERY_TASK_QUEUES = {CRM_EVENTS_QUEUE: {}, CELERY_TASK_DEFAULT_QUEUE: {}}
CELERY_TASK_ROUTES = {
    "crm_sync.tasks.sync_call_task": {"queue": CRM_EVENTS_QUEUE},
    "crm_sync.tasks.route_call_task": {"queue": CRM_EVENTS_QUEUE},
}
CELERY_TASK_ALWAYS_EAGER = False
# Threads, not forked children: the worker process also runs the socket supervisor's
# threads, and forking a process that has running threads can deadlock the child.
CELERY_WORKER_POOL = "threads"
# Celery's own log line, with the ids structured logging adds (ctihub.lib.logs; filter set in ctihub.celery).
CELERY_WORKER_LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s]%(ids)s %(message)s"
CELERY_BEAT_SCHEDULE: dict = {}

# redis-py caps a pool at 100 connections and then fails instead of waiting: with hundreds of agents
# connecting at once (a deploy, a Wi-Fi blip) every group_add past the 100th crashed its consumer.
CHANNELS_REDIS_MAX_CONNECTIONS = strict_int("CHANNELS_REDIS_MAX_CONNECTIONS", 2000, minimum=10)
# A consumer waits for its messages with a 5 s BZPOPMIN, and redis-py (8.x) gives up reading after 5 s
# by default: an idle console's consumer crashed (close 1011) every 5 s. Read for longer than the pop.
CHANNELS_REDIS_SOCKET_TIMEOUT = 15
# How long a thread of daphne or the worker may hold the GIL before another gets it (ctihub/lib/threads.py).
GIL_SWITCH_INTERVAL_US = strict_int("GIL_SWITCH_INTERVAL_US", 1000, minimum=100)
# Each console asks the database this often for cards it should have had: a publish lost after its
# commit (a worker killed in between, Redis restarting) would leave a card stale until a reload.
CONSOLE_RESYNC_SECONDS = strict_int("CONSOLE_RESYNC_SECONDS", 15, minimum=1)
# daphne freezes each settled wave of console setups out of the garbage collector's full walks
# (ctihub/lib/console_heap.py): at 1,000 consoles a full collection stopped it for 130-190 ms. Off in the tests' process.
CONSOLE_HEAP_FREEZE = strict_bool("CONSOLE_HEAP_FREEZE", True)
# Consoles of one web process that join their groups and read their snapshot at the same time; the others
# wait their turn (telephony/consumers.py). A connect storm of 1,000 all at once opened 1,763 Redis
# connections and timed its own joins out (issue 16). Half the web pool's threads (ctihub/lib/ws_db.py): the
# other half stays free for HTTP requests during a storm.
CONSOLE_SETUP_CONCURRENCY = strict_int("CONSOLE_SETUP_CONCURRENCY", 8, minimum=1)


def _redis_driver_info():
    from redis.driver_info import DriverInfo

    return DriverInfo()


# A channel of the layer is a web process's (all its consoles share one Redis set, a card is one message
# per group): channels_redis's group_send skips a channel holding ``capacity`` messages, and the card comes
# only with the next resync (CONSOLE_RESYNC_SECONDS). 1,000 was 500 cards of backlog, which a burst of
# calls to 1,000 consoles reached; 10,000 is seconds of the batched receive's work (ctihub/lib/channel_layer.py)
# and at most a few MB in Redis for a process that died (its messages expire after ``expiry``).
CHANNELS_CAPACITY = strict_int("CHANNELS_CAPACITY", 10_000, minimum=100)

CHANNEL_LAYERS = {
    "default": {
        # channels_redis's, receiving a process's messages in batches (one round trip, not four, a message).
        "BACKEND": "ctihub.lib.channel_layer.BatchingRedisChannelLayer",
        "CONFIG": {
            "hosts": [{"address": REDIS_URL, "max_connections": CHANNELS_REDIS_MAX_CONNECTIONS,
                       "socket_timeout": CHANNELS_REDIS_SOCKET_TIMEOUT,
                       # redis-py 8 looks its own version up in the installed packages' metadata for every
                       # connection it opens (~0.3 ms quiet, ~10 ms on a busy machine): once is enough.
                       "driver_info": _redis_driver_info()}],
            "capacity": CHANNELS_CAPACITY,
            "expiry": 30,
        },
    }
}

# --- Auth, i18n, static ------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
# django-axes first: it refuses a locked-out user name or address before any password is checked.
AUTHENTICATION_BACKENDS = [
    "accounts.throttle.LoginThrottleBackend",
    "django.contrib.auth.backends.ModelBackend",
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en"
# The console, wallboard, voicemail, login and admin in these (README, "Languages"): catalogs in locale/,
# compiled by scripts/setup; refreshed by scripts/messages.
LANGUAGES = [("en", "English"), ("ru", "Русский"), ("fr", "Français")]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True
# Region used to read numbers the PBX gives without a country code.
DEFAULT_PHONE_REGION = env.str("DEFAULT_PHONE_REGION", default="FR").upper()

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = env.str("STATIC_ROOT", default=str(BASE_DIR / "staticfiles"))
# In development files are served straight from static/ (no collectstatic step).
WHITENOISE_USE_FINDERS = DEBUG
WHITENOISE_AUTOREFRESH = DEBUG

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "EXCEPTION_HANDLER": "rest_framework.views.exception_handler",
    # DRF's own, its answer kept per Accept header (ctihub/lib/negotiation.py).
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "ctihub.lib.negotiation.RememberedNegotiation",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "ctihub API",
    "DESCRIPTION": "Endpoints that retailCRM and the PBXs call on ctihub.",
    "VERSION": "1.0.0",
}

# --- Production hardening -----------------------------------------------------------
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_SECURE = strict_bool("SECURE_COOKIES", not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
# Behind TLS (production): browsers keep to HTTPS for a year once they saw the hub over it.
SECURE_HSTS_SECONDS = 0 if DEBUG else 31536000
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
# Requests per second each caller (clientId, else address) may send to the public
# endpoints (retailCRM callbacks, recordUrl, Telepo webhook); bursts up to 3x that. 429 past it.
PUBLIC_RATE_LIMIT_PER_SECOND = strict_int("PUBLIC_RATE_LIMIT_PER_SECOND", 20, minimum=1)
# Bearer token /metrics asks for. Without one /metrics is refused, unless METRICS_PUBLIC opens it
# (the default only with DEBUG: a development machine; keep an open /metrics off the public proxy).
METRICS_TOKEN = _secret("METRICS_TOKEN")
METRICS_PUBLIC = strict_bool("METRICS_PUBLIC", DEBUG)

# Login throttling (django-axes) on /login/ and /admin/login/: after LOGIN_FAILURE_LIMIT failed logins
# for one user name (from any address), or from one address (for any user names), that user name or
# address is refused, even with the right password, until LOGIN_LOCKOUT_MINUTES pass without a new try.
LOGIN_FAILURE_LIMIT = strict_int("LOGIN_FAILURE_LIMIT", 10, minimum=1)
LOGIN_LOCKOUT_MINUTES = strict_int("LOGIN_LOCKOUT_MINUTES", 15, minimum=1)
AXES_FAILURE_LIMIT = LOGIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = timedelta(minutes=LOGIN_LOCKOUT_MINUTES)
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]  # each on its own, not the pair
AXES_LOCKOUT_CALLABLE = "accounts.throttle.lockout_response"  # 429 and registration/locked_out.html
# Successful logins are in the access log already; axes would keep a row for each one forever.
AXES_DISABLE_ACCESS_LOG = True
AXES_VERBOSE = False

# Content-Security-Policy (django-csp): scripts, styles and everything else only from the hub itself,
# so markup an attacker slipped into a page (a CRM field, a caller name) can run nothing. No page has
# inline script, inline style or an event-handler attribute; keep it so (tests/security/test_csp.py).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "media-src": ["'self'"],
        "connect-src": ["'self'"],  # CSP 3: 'self' covers ws:// and wss:// to the page's own host
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    },
}
# Threads per web process that handle HTTP requests (each keeps one database connection; a view
# waiting on a PBX holds one); 16 matches the HTTP client's pool per host, so none opens a throwaway connection.
WEB_POOL_THREADS = strict_int("WEB_POOL_THREADS", 16, minimum=1)
# daphne processes sharing the web port (ctihub/web.py): one process is held to about one core by the GIL.
# Each may hold WEB_POOL_THREADS database connections. In a container limited by a CPU quota, os.cpu_count()
# still counts the host's cores: set it to the quota.
WEB_PROCESSES = strict_int("WEB_PROCESSES", os.cpu_count() or 1, minimum=1)
# The benchmarks' floors (bench/floors.py): a bare DRF view and a bare forwarding consumer served by the
# same daphne as ctihub's own, so a benchmark can measure both side by side. Never set it in production.
BENCH_FLOORS = strict_bool("BENCH_FLOORS", False)
# Each call card's message carries the times it passed each stage (ctihub/lib/card_trace.py), and the console
# sends them beside the card: for the pop-up benchmark's breakdown. Off in production.
CARD_TRACE = strict_bool("CARD_TRACE", False)

# --- Outbound HTTP (one client layer: ctihub.lib.http_client) ---------------------------
HTTP_CONNECT_TIMEOUT = float(strict_int("HTTP_CONNECT_TIMEOUT_MS", 3000, minimum=1)) / 1000
HTTP_READ_TIMEOUT = float(strict_int("HTTP_READ_TIMEOUT_MS", 10000, minimum=1)) / 1000

# --- PBX sockets held by workers (telephony.sockets.supervisor) ----------------------------
LISTENER_SUPERVISOR = strict_bool("LISTENER_SUPERVISOR", True)
LISTENER_LEASE_TTL_MS = strict_int("LISTENER_LEASE_TTL_MS", 15000, minimum=1000)
LISTENER_SCAN_SECONDS = strict_int("LISTENER_SCAN_SECONDS", 5, minimum=1)
LISTENER_KEEPALIVE_SECONDS = strict_int("LISTENER_KEEPALIVE_SECONDS", 20, minimum=1)
LISTENER_BACKOFF_CAP_SECONDS = strict_int("LISTENER_BACKOFF_CAP_SECONDS", 60, minimum=1)
# At most this many listeners held by one worker process (0: no cap but the fair share's). Workers share the
# listeners fairly by themselves (telephony.sockets.fair_share); this caps each share too, so that past
# workers x cap nobody holds the rest. For benchmarks pinning a known split; leave it 0 in production.
LISTENER_MAX_PER_WORKER = strict_int("LISTENER_MAX_PER_WORKER", 0, minimum=0)
# Fair share (telephony.sockets.fair_share): each worker beats in Redis; one silent this long is dead and its
# share goes to the others. Capped at LISTENER_LEASE_TTL_MS: a dead worker must not outlive its leases.
LISTENER_HEARTBEAT_TTL_MS = strict_int("LISTENER_HEARTBEAT_TTL_MS", 15000, minimum=1000)
# A worker may hold this many listeners beyond ceil(listeners / live workers) while nobody short takes them.
LISTENER_SHARE_SLACK = strict_int("LISTENER_SHARE_SLACK", 1, minimum=0)
# A listener offered to another worker and not taken this long is withdrawn; a worker stopping cleanly waits
# this long for others to take its listeners over (twice as long for handovers under way), then closes the rest.
LISTENER_HANDOVER_SECONDS = strict_int("LISTENER_HANDOVER_SECONDS", 15, minimum=1)
# Logins one worker runs at once to take listeners over from other workers (a join, a clean stop), beside the 8
# it runs for listeners it starts holding. How fast listeners move is how fast the PBX takes logins: raise it
# for a PBX that takes more, lower it for one that must not be stormed (every joining worker runs this many).
LISTENER_HANDOVER_CONCURRENCY = strict_int("LISTENER_HANDOVER_CONCURRENCY", 32, minimum=1)
# Database connections the socket threads of one worker share (PostgreSQL allows 100 in all by default).
LISTENER_DB_CONNECTIONS = strict_int("LISTENER_DB_CONNECTIONS", 20, minimum=1)
# How often each Istra listener's session gets a cheap authenticated GET: it keeps the session active
# (pings are not) and finds one expired under a socket left open. Shorter than the PBX's inactivity expiry.
ISTRA_SESSION_CHECK_SECONDS = strict_int("ISTRA_SESSION_CHECK_SECONDS", 120, minimum=1)
# Istra suspends an account after too many failed logins in a row: after a refused login, nothing logs in
# with those credentials until an admin saves the account or this many seconds pass (then one login is tried).
ISTRA_LOGIN_COOLDOWN_SECONDS = strict_int("ISTRA_LOGIN_COOLDOWN_SECONDS", 900, minimum=0)

LOG_LEVEL = env.str("LOG_LEVEL", default="INFO").upper()
if LOG_LEVEL not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
    raise ImproperlyConfigured(f"LOG_LEVEL={LOG_LEVEL!r} is not a logging level")
# plain: one readable line; json: one JSON object per line (for a log pipeline).
LOG_FORMAT = env.str("LOG_FORMAT", default="plain").lower()
if LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT={LOG_FORMAT!r} must be plain or json")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"ids": {"()": "ctihub.lib.logs.ContextFilter"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s%(ids)s %(message)s"},
        "json": {"()": "ctihub.lib.logs.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["ids"]}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # Django's own default handlers print "Not Found: /api/telepo/webhook/<secret>" unmasked (and
        # every line twice): its loggers go through ours alone.
        "django": {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False},
        "django.server": {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False},
        "django.db.backends": {"level": "INFO"},
        "daphne": {"level": "WARNING"},
    },
}

# --- Calls the PBX went silent on (telephony.sweep) ------------------------------------
# A call without news (no event applied) for longer than its state's bound is ended as "swept", so a lost
# end (a myCrm socket down while the call ended, and no End User history to read) never leaves it live.
CALL_SWEEP_SECONDS = strict_int("CALL_SWEEP_SECONDS", 30, minimum=1)
CALL_STALE_RINGING_SECONDS = strict_int("CALL_STALE_RINGING_SECONDS", 900, minimum=1)
CALL_STALE_DIALING_SECONDS = strict_int("CALL_STALE_DIALING_SECONDS", 900, minimum=1)
CALL_STALE_TALKING_SECONDS = strict_int("CALL_STALE_TALKING_SECONDS", 14400, minimum=1)
CALL_STALE_HELD_SECONDS = strict_int("CALL_STALE_HELD_SECONDS", 7200, minimum=1)
CELERY_BEAT_SCHEDULE["call-stale-sweep"] = {
    "task": "telephony.tasks.sweep_stale_calls_task",
    "schedule": float(CALL_SWEEP_SECONDS),
}

# --- retailCRM (crm_sync) ------------------------------------------------------------
# How often beat re-queues what lost tasks or a retailCRM outage left (events, the upload outbox).
RETAILCRM_SWEEP_SECONDS = strict_int("RETAILCRM_SWEEP_SECONDS", 15, minimum=5)
# How long a recordUrl given to retailCRM stays playable (its signature expires after that).
RETAILCRM_RECORD_URL_MAX_AGE_DAYS = strict_int("RETAILCRM_RECORD_URL_MAX_AGE_DAYS", 90, minimum=1)
# How long the upload of a missed call waits for the voicemail its caller may still be leaving (0: never waits).
RETAILCRM_VOICEMAIL_WAIT_SECONDS = strict_int("RETAILCRM_VOICEMAIL_WAIT_SECONDS", 180, minimum=0)
CELERY_BEAT_SCHEDULE["crm-sync-sweep"] = {
    "task": "crm_sync.tasks.sweep_task",
    "schedule": float(RETAILCRM_SWEEP_SECONDS),
}
# The PBX providers add their own entries (telephony/providers/<kind>/apps.py, registry.register).
