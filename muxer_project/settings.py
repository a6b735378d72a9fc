"""ModelMuxer settings.

Every value comes from the environment through django-environ. Precedence:
process environment, then the config file (``MUXER_ENV_FILE`` or ``.env`` in
the repo root), then the defaults below. With nothing set, the project runs on
the embedded default: SQLite, the local-memory cache, eager Celery and the
in-memory channel layer. ``DATABASE_URL`` and ``REDIS_URL`` switch to
PostgreSQL and Redis; ``MUXER_PRODUCTION=true`` turns on the deploy hardening.
"""

from datetime import timedelta
from pathlib import Path

import django_stubs_ext
import environ
from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured

from muxer_project.logs import logging_config

# Lets generic classes such as ModelAdmin[T] be subscripted at run time.
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
_env_file = env.str("MUXER_ENV_FILE", default=str(BASE_DIR / ".env"))
if Path(_env_file).is_file():
    # overwrite=False keeps real environment variables ahead of the file.
    env.read_env(_env_file, overwrite=False)

PRODUCTION = env.bool("MUXER_PRODUCTION", default=False)
DEBUG = env.bool("DEBUG", default=False)

_DEV_SECRET_KEY = "django-insecure-modelmuxer-dev-only-not-for-production"
SECRET_KEY = env.str("SECRET_KEY", default=_DEV_SECRET_KEY)
if PRODUCTION and (SECRET_KEY == _DEV_SECRET_KEY or len(SECRET_KEY) < 50):
    raise ImproperlyConfigured("MUXER_PRODUCTION needs a real SECRET_KEY of at least 50 characters.")
if PRODUCTION and DEBUG:
    raise ImproperlyConfigured("DEBUG must be off when MUXER_PRODUCTION is set.")

# Fernet keys (comma-separated, newest first) for organizations' own provider keys.
MUXER_FERNET_KEYS = env.list("MUXER_FERNET_KEYS", default=[])

# API key digests are keyed separately so that rotating SECRET_KEY (sessions)
# does not invalidate every issued API key.
API_KEY_HMAC_SECRET = env.str("MUXER_API_KEY_SECRET", default=SECRET_KEY)

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=[] if PRODUCTION else ["*"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework_simplejwt",
    "rest_framework_simplejwt.token_blacklist",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "corsheaders",
    "channels",
    "django_prometheus",
    "accounts",
    "providers",
    "routing",
    "billing",
    "audit",
    "console",
]

MIDDLEWARE = [
    # Health probes and the metrics scrape, before host validation and the HTTPS redirect (muxer_project/health.py).
    "muxer_project.health.ProbeMiddleware",
    # django-prometheus times everything between its two halves, first and last.
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    # Early, so every response carries X-Request-ID and audit events know the request (audit/context.py).
    "audit.middleware.RequestContextMiddleware",
    # One JSON line per request, with the request id (muxer_project/logs.py).
    "muxer_project.logs.AccessLogMiddleware",
    # A view that meets an unreachable database answers 503, not 500 (muxer_project/errors.py).
    "muxer_project.errors.DatabaseUnavailableMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "accounts.http_security.ContentSecurityPolicyMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "muxer_project.urls"

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

WSGI_APPLICATION = "muxer_project.wsgi.application"
ASGI_APPLICATION = "muxer_project.asgi.application"

# --- Data stores -----------------------------------------------------------
DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
}
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=0)
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Concurrent writers (the proxy's usage rows, the API) on the embedded
    # database: WAL lets readers run beside a writer, and IMMEDIATE transactions
    # take the write lock up front, so a writer waits instead of failing with
    # "database is locked" when upgrading a read lock.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    # A file, not memory, so that servers the tests start can share the test database.
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / ".test-db.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# The same backends wrapped by django-prometheus, which counts queries, their time and errors.
_INSTRUMENTED = {
    "django.db.backends.postgresql": "django_prometheus.db.backends.postgresql",
    "django.db.backends.sqlite3": "django_prometheus.db.backends.sqlite3",
    "django_redis.cache.RedisCache": "django_prometheus.cache.backends.redis.RedisCache",
    "django.core.cache.backends.locmem.LocMemCache": "django_prometheus.cache.backends.locmem.LocMemCache",
}
DATABASES["default"]["ENGINE"] = _INSTRUMENTED.get(DATABASES["default"]["ENGINE"], DATABASES["default"]["ENGINE"])

REDIS_URL = env.str("REDIS_URL", default="")

# --- Redis outages (muxer_project/redis.py, outage.py; README "When Redis fails") ---
# Every Redis client gives up on a command after this long, and on connecting after the next, so a frozen
# Redis costs a request at most about that, once: the process then marks Redis down and serves from fallbacks.
MUXER_REDIS_SOCKET_TIMEOUT_SECONDS = env.float("MUXER_REDIS_SOCKET_TIMEOUT_SECONDS", default=1.0)
MUXER_REDIS_CONNECT_TIMEOUT_SECONDS = env.float("MUXER_REDIS_CONNECT_TIMEOUT_SECONDS", default=1.0)
# How long a request waits for a free connection of its process's pool (MUXER_REDIS_MAX_CONNECTIONS).
MUXER_REDIS_POOL_TIMEOUT_SECONDS = env.float("MUXER_REDIS_POOL_TIMEOUT_SECONDS", default=1.0)
# While Redis is down, each process asks it again (a PING in the background) at most this often.
MUXER_REDIS_RETRY_SECONDS = env.float("MUXER_REDIS_RETRY_SECONDS", default=1.0)
# While Redis is down, budgets are checked against the ledger; a process re-reads a budget's sum at most this often.
MUXER_BUDGET_LEDGER_REFRESH_SECONDS = env.float("MUXER_BUDGET_LEDGER_REFRESH_SECONDS", default=1.0)

if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": _INSTRUMENTED["django_redis.cache.RedisCache"],
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "mm",
            "OPTIONS": {
                "SOCKET_CONNECT_TIMEOUT": MUXER_REDIS_CONNECT_TIMEOUT_SECONDS,
                "SOCKET_TIMEOUT": MUXER_REDIS_SOCKET_TIMEOUT_SECONDS,
            },
        }
    }
    # A WebSocket's receive holds a connection in BZPOPMIN for up to 5 s (channels_redis's brpop_timeout),
    # so the channel layer's socket timeout is that plus the usual one.
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [
                    {
                        "address": REDIS_URL,
                        "socket_timeout": 5 + MUXER_REDIS_SOCKET_TIMEOUT_SECONDS,
                        "socket_connect_timeout": MUXER_REDIS_CONNECT_TIMEOUT_SECONDS,
                    }
                ]
            },
        }
    }
else:
    CACHES = {"default": {"BACKEND": _INSTRUMENTED["django.core.cache.backends.locmem.LocMemCache"]}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# --- Celery ----------------------------------------------------------------
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL or "memory://")
# A frozen broker must not hang a publish (a budget alert queued from a settlement) or a worker: commands give
# up after this long. It must exceed the worker's BRPOP wait (kombu's brpop_timeout, 1 s).
MUXER_BROKER_SOCKET_TIMEOUT_SECONDS = env.float("MUXER_BROKER_SOCKET_TIMEOUT_SECONDS", default=5.0)
if CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "socket_timeout": MUXER_BROKER_SOCKET_TIMEOUT_SECONDS,
        "socket_connect_timeout": MUXER_REDIS_CONNECT_TIMEOUT_SECONDS,
    }
# A publish that fails is tried twice more, within about a second, then given up (and logged by the caller).
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=not REDIS_URL)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TIMEZONE = "UTC"
# One queue name per deployment (or per test run sharing a Redis), so workers take only their own tasks.
CELERY_TASK_DEFAULT_QUEUE = env.str("CELERY_TASK_DEFAULT_QUEUE", default="celery")

# --- Email (budget alerts) ---------------------------------------------------
# EMAIL_URL configures SMTP (smtp+tls://user:password@host:587); without it,
# mail is printed to the console. EMAIL_BACKEND and EMAIL_FILE_PATH override
# it (tests write mail to files with the file-based backend).
_EMAIL = env.email_url("EMAIL_URL", default="consolemail://")
EMAIL_BACKEND = env.str("EMAIL_BACKEND", default=_EMAIL["EMAIL_BACKEND"])
EMAIL_FILE_PATH = env.str("EMAIL_FILE_PATH", default=_EMAIL["EMAIL_FILE_PATH"])
EMAIL_HOST = _EMAIL["EMAIL_HOST"] or "localhost"
EMAIL_PORT = _EMAIL["EMAIL_PORT"] or 25
EMAIL_HOST_USER = _EMAIL["EMAIL_HOST_USER"] or ""
EMAIL_HOST_PASSWORD = _EMAIL["EMAIL_HOST_PASSWORD"] or ""
EMAIL_USE_TLS = bool(_EMAIL.get("EMAIL_USE_TLS", False))
EMAIL_USE_SSL = bool(_EMAIL.get("EMAIL_USE_SSL", False))
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=10)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="ModelMuxer <alerts@modelmuxer.local>")
SERVER_EMAIL = env.str("SERVER_EMAIL", default=DEFAULT_FROM_EMAIL)

# --- Auth ------------------------------------------------------------------
AUTH_USER_MODEL = "accounts.User"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Every password login (console, admin, JWT) goes through the lockout (accounts/bruteforce.py).
AUTHENTICATION_BACKENDS = ["accounts.bruteforce.LockoutModelBackend"]
LOGIN_URL = "/console/login/"
LOGIN_REDIRECT_URL = "/console/"
LOGOUT_REDIRECT_URL = "/console/login/"
# Failed logins before an account (or, across accounts, an address) is locked, and for how long.
MUXER_LOGIN_MAX_FAILURES = env.int("MUXER_LOGIN_MAX_FAILURES", default=5)
MUXER_LOGIN_MAX_FAILURES_PER_IP = env.int("MUXER_LOGIN_MAX_FAILURES_PER_IP", default=20)
MUXER_LOGIN_LOCKOUT_SECONDS = env.int("MUXER_LOGIN_LOCKOUT_SECONDS", default=900)
SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=env.int("MUXER_JWT_ACCESS_MINUTES", default=15)),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=env.int("MUXER_JWT_REFRESH_DAYS", default=7)),
    "ROTATE_REFRESH_TOKENS": True,
    "BLACKLIST_AFTER_ROTATION": True,
    # The token view sends user_logged_in, whose receiver updates last_login already.
    "UPDATE_LAST_LOGIN": False,
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.jwt_auth.BearerJWTAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "routing.errors.drf_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "ModelMuxer API",
    "DESCRIPTION": "OpenAI-compatible LLM gateway and its management API.",
    "VERSION": "0.1.0",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "routing.openapi.add_proxy_endpoints",
    ],
    # The docs pages (/api/docs/, /api/redoc/) load their assets from this server, never a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # No "valid" badge fetched from validator.swagger.io.
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
}

# --- Console ------------------------------------------------------------------
# (sign-up, email verification, password reset, onboarding, the playground)
# The deployment's public root URL (https://muxer.example.com). The onboarding snippets call <it>/v1 (a value
# already ending in /v1 is used as is), and emailed links start with it. Empty: each request's own host.
MUXER_PUBLIC_BASE_URL = env.str("MUXER_PUBLIC_BASE_URL", default="").rstrip("/")
# Whether anyone may create an account at /console/signup/; off, people come in through operators only.
MUXER_SIGNUP_ENABLED = env.bool("MUXER_SIGNUP_ENABLED", default=True)
# How long an emailed link works: email verification, and password reset (Django's setting).
MUXER_EMAIL_VERIFICATION_SECONDS = env.int("MUXER_EMAIL_VERIFICATION_SECONDS", default=3 * 24 * 3600)
PASSWORD_RESET_TIMEOUT = env.int("PASSWORD_RESET_TIMEOUT", default=3600)
# The shortest wait between two verification or password-reset emails to one address.
MUXER_ACCOUNT_EMAIL_INTERVAL_SECONDS = env.int("MUXER_ACCOUNT_EMAIL_INTERVAL_SECONDS", default=60)
# Accounts one address may create in an hour (0: no limit); a script cannot mint accounts by the thousand.
MUXER_SIGNUPS_PER_IP_PER_HOUR = env.int("MUXER_SIGNUPS_PER_IP_PER_HOUR", default=10)

# --- HTTP hardening (every environment) ---------------------------------------
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
# Set on HTML responses (accounts/http_security.py). Inline styles are allowed for the
# console's and the API docs' own style blocks; scripts only from this origin.
MUXER_CONTENT_SECURITY_POLICY = env.str(
    "MUXER_CONTENT_SECURITY_POLICY",
    default="default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; object-src 'none'; base-uri 'self'; "
    "form-action 'self'; frame-ancestors 'none'",
)
# CORS for browser clients of /v1/ and /api/ (django-cors-headers). No origin is allowed unless listed.
CORS_ALLOWED_ORIGINS = env.list("CORS_ALLOWED_ORIGINS", default=[])
CORS_URLS_REGEX = r"^/(v1|api)/.*$"
CORS_ALLOW_HEADERS = [
    "accept",
    "authorization",
    "content-type",
    "user-agent",
    "x-api-key",
    "x-request-id",
    "idempotency-key",
    "openai-organization",
    "openai-project",
    "openai-beta",
    "anthropic-version",
    "anthropic-beta",
    "anthropic-dangerous-direct-browser-access",
    "x-stainless-arch",
    "x-stainless-async",
    "x-stainless-helper",
    "x-stainless-helper-method",
    "x-stainless-lang",
    "x-stainless-os",
    "x-stainless-package-version",
    "x-stainless-poll-helper",
    "x-stainless-custom-poll-interval",
    "x-stainless-read-timeout",
    "x-stainless-retry-count",
    "x-stainless-runtime",
    "x-stainless-runtime-version",
    "x-stainless-stream-helper",
    "x-stainless-timeout",
    "x-muxer-strategy",
    "x-muxer-max-cost",
]
CORS_EXPOSE_HEADERS = [
    "x-request-id",
    "retry-after",
    "x-ratelimit-limit-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
    "x-muxer-model",
    "x-muxer-provider",
    "x-muxer-route-reason",
    "x-muxer-cost-usd",
    "x-muxer-overhead-ms",
    "x-muxer-budget-remaining",
    "x-muxer-cascade",
    "x-muxer-attempts",
    "x-muxer-fallbacks",
]

# --- I18N ------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# Outside production, static files are served straight from the apps (finders),
# so nothing needs collecting before `make run`.
STATIC_ROOT = env.str("STATIC_ROOT", default=str(BASE_DIR / "staticfiles")) if PRODUCTION else None
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = not PRODUCTION

# --- Gateway ---------------------------------------------------------------
# Largest request body the proxy accepts, in bytes.
MUXER_MAX_BODY_BYTES = env.int("MUXER_MAX_BODY_BYTES", default=8 * 1024 * 1024)
# Most messages in one request, and most estimated input tokens (the named model's context window also applies).
MUXER_MAX_MESSAGES = env.int("MUXER_MAX_MESSAGES", default=1000)
MUXER_MAX_INPUT_TOKENS = env.int("MUXER_MAX_INPUT_TOKENS", default=1_000_000)
# How long a process trusts its cached copy of an API key. Revocation reaches
# every process within this many seconds.
MUXER_KEY_CACHE_SECONDS = env.float("MUXER_KEY_CACHE_SECONDS", default=2.0)
# A rotated key keeps working this long by default (the rotate call may ask for 0..604800).
MUXER_KEY_ROTATION_GRACE_SECONDS = env.int("MUXER_KEY_ROTATION_GRACE_SECONDS", default=86400)
# How long an invitation to an organization can be accepted.
MUXER_INVITATION_DAYS = env.int("MUXER_INVITATION_DAYS", default=7)
# How long a process trusts its snapshot of the model catalog.
MUXER_CATALOG_CACHE_SECONDS = env.float("MUXER_CATALOG_CACHE_SECONDS", default=10.0)
MUXER_UPSTREAM_TIMEOUT_SECONDS = env.float("MUXER_UPSTREAM_TIMEOUT_SECONDS", default=600.0)
MUXER_UPSTREAM_CONNECT_TIMEOUT_SECONDS = env.float("MUXER_UPSTREAM_CONNECT_TIMEOUT_SECONDS", default=5.0)
MUXER_UPSTREAM_FIRST_BYTE_TIMEOUT_SECONDS = env.float("MUXER_UPSTREAM_FIRST_BYTE_TIMEOUT_SECONDS", default=60.0)
# Retries: attempts per model in a route, exponential backoff with full jitter
# (Retry-After is a floor), and a total time budget for all retries and fallbacks.
MUXER_RETRY_ATTEMPTS_PER_MODEL = env.int("MUXER_RETRY_ATTEMPTS_PER_MODEL", default=2)
MUXER_RETRY_BASE_DELAY_SECONDS = env.float("MUXER_RETRY_BASE_DELAY_SECONDS", default=0.25)
MUXER_RETRY_MAX_DELAY_SECONDS = env.float("MUXER_RETRY_MAX_DELAY_SECONDS", default=4.0)
MUXER_RETRY_BUDGET_SECONDS = env.float("MUXER_RETRY_BUDGET_SECONDS", default=20.0)
# Circuit breaker per provider and model (see providers/resilience.py).
MUXER_BREAKER_FAILURE_THRESHOLD = env.int("MUXER_BREAKER_FAILURE_THRESHOLD", default=5)
MUXER_BREAKER_ERROR_RATE = env.float("MUXER_BREAKER_ERROR_RATE", default=0.5)
MUXER_BREAKER_MIN_REQUESTS = env.int("MUXER_BREAKER_MIN_REQUESTS", default=20)
MUXER_BREAKER_WINDOW_SECONDS = env.float("MUXER_BREAKER_WINDOW_SECONDS", default=60.0)
MUXER_BREAKER_COOLDOWN_SECONDS = env.float("MUXER_BREAKER_COOLDOWN_SECONDS", default=30.0)
MUXER_UPSTREAM_MAX_CONNECTIONS = env.int("MUXER_UPSTREAM_MAX_CONNECTIONS", default=512)
MUXER_REDIS_MAX_CONNECTIONS = env.int("MUXER_REDIS_MAX_CONNECTIONS", default=64)
# --- Routing (routing/strategies) ---
# A routed request's score (0 easy .. 1 hard) picks a quality tier: below the
# first threshold economy, below the second standard, else premium.
MUXER_ROUTER_HEURISTIC_THRESHOLDS = tuple(env.list("MUXER_ROUTER_HEURISTIC_THRESHOLDS", cast=float, default=[0.3, 0.6]))
# The semantic score is the calibrated chance that the cheap model fails where the strong one
# succeeds; on MMLU its median is 0.15 and its 90th percentile 0.32.
MUXER_ROUTER_SEMANTIC_THRESHOLDS = tuple(env.list("MUXER_ROUTER_SEMANTIC_THRESHOLDS", cast=float, default=[0.2, 0.3]))
# Hybrid: weights of the heuristic and semantic scores, and the uncertain band
# of the combined score that is settled by a cascade rather than a guess.
MUXER_ROUTER_HYBRID_WEIGHTS = tuple(env.list("MUXER_ROUTER_HYBRID_WEIGHTS", cast=float, default=[0.3, 0.7]))
MUXER_ROUTER_HYBRID_BAND = tuple(env.list("MUXER_ROUTER_HYBRID_BAND", cast=float, default=[0.2, 0.3]))
# Cascade: an answer scoring below this (0..1) is escalated to the next tier.
MUXER_CASCADE_ACCEPT_SCORE = env.float("MUXER_CASCADE_ACCEPT_SCORE", default=0.6)
# Output tokens assumed for a cost estimate when the request sets no max_tokens,
# and the fewest a cost cap must leave room for.
MUXER_ROUTER_EXPECTED_OUTPUT_TOKENS = env.int("MUXER_ROUTER_EXPECTED_OUTPUT_TOKENS", default=512)
MUXER_ROUTER_MIN_OUTPUT_TOKENS = env.int("MUXER_ROUTER_MIN_OUTPUT_TOKENS", default=64)
# URLs typed into forms without a scheme are taken as https (Django 6's default, opted into now).
FORMS_URLFIELD_ASSUME_HTTPS = True

# --- Response cache (routing/response_cache.py) ---
# Exact-match answers have a cache alias of their own: Redis when MUXER_RESPONSE_CACHE_URL (by default
# REDIS_URL) is set, so every instance shares them; else this process's memory, keeping at most
# MUXER_RESPONSE_CACHE_LOCAL_ENTRIES. A separate Redis lets it evict answers (allkeys-lru) without
# touching rate-limit and budget counters. How long an answer is kept is each organization's setting.
MUXER_RESPONSE_CACHE_URL = env.str("MUXER_RESPONSE_CACHE_URL", default=REDIS_URL)
# Answers larger than this (their JSON, in bytes) are not kept.
MUXER_RESPONSE_CACHE_MAX_BYTES = env.int("MUXER_RESPONSE_CACHE_MAX_BYTES", default=512 * 1024)
# A slow cache costs a request at most about this long (twice: lookup and store) before it is a miss.
MUXER_RESPONSE_CACHE_TIMEOUT_SECONDS = env.float("MUXER_RESPONSE_CACHE_TIMEOUT_SECONDS", default=0.5)
if MUXER_RESPONSE_CACHE_URL:
    CACHES["responses"] = {
        "BACKEND": _INSTRUMENTED["django_redis.cache.RedisCache"],
        "LOCATION": MUXER_RESPONSE_CACHE_URL,
        "KEY_PREFIX": "mm:resp",
        "OPTIONS": {
            "SOCKET_CONNECT_TIMEOUT": MUXER_RESPONSE_CACHE_TIMEOUT_SECONDS,
            "SOCKET_TIMEOUT": MUXER_RESPONSE_CACHE_TIMEOUT_SECONDS,
        },
    }
else:
    CACHES["responses"] = {
        "BACKEND": _INSTRUMENTED["django.core.cache.backends.locmem.LocMemCache"],
        "LOCATION": "muxer-responses",
        "OPTIONS": {"MAX_ENTRIES": env.int("MUXER_RESPONSE_CACHE_LOCAL_ENTRIES", default=1000)},
    }
# --- Idempotency (routing/idempotency.py) ---
# How long the response to a request with an Idempotency-Key is kept and replayed (Stripe keeps 24 hours).
MUXER_IDEMPOTENCY_TTL_SECONDS = env.float("MUXER_IDEMPOTENCY_TTL_SECONDS", default=86400.0)
# How long a duplicate of a request still being answered waits for that answer before it gets a 409.
MUXER_IDEMPOTENCY_WAIT_SECONDS = env.float("MUXER_IDEMPOTENCY_WAIT_SECONDS", default=30.0)
# A claim a dead worker never finished frees its key after this; longer than any request
# (like MUXER_BUDGET_RESERVATION_SECONDS), so a slow answer is never run twice.
MUXER_IDEMPOTENCY_PENDING_SECONDS = env.float("MUXER_IDEMPOTENCY_PENDING_SECONDS", default=900.0)
# --- Rate limits (routing/ratelimit.py) ---
# When Redis cannot be reached: true admits requests without limits, false refuses them (503).
MUXER_RATELIMIT_FAIL_OPEN = env.bool("MUXER_RATELIMIT_FAIL_OPEN", default=True)
# --- Budgets (billing/budgets.py) ---
# How long a process trusts its copy of an organization's budgets; changes apply within this.
MUXER_BUDGET_CACHE_SECONDS = env.float("MUXER_BUDGET_CACHE_SECONDS", default=2.0)
# A reservation a crashed worker never settled is released after this; longer than any request.
MUXER_BUDGET_RESERVATION_SECONDS = env.int("MUXER_BUDGET_RESERVATION_SECONDS", default=900)
# After Redis lost its data under requests in flight, budgets are reconciled to the ledger this much later
# (time for their usage to reach the ledger), by a Celery worker (billing/budgets.py, counters_lost).
MUXER_BUDGET_REBUILD_DELAY_SECONDS = env.float("MUXER_BUDGET_REBUILD_DELAY_SECONDS", default=5.0)
# Redis stream that carries usage events from the proxy to the usage writer.
MUXER_USAGE_STREAM = env.str("MUXER_USAGE_STREAM", default="muxer:usage")
# --- Usage rollups and retention (billing/rollups.py) ---
# Raw usage records are deleted after this many days, once the daily rollups
# count them all; older days are then answered from the rollups. Records a
# budget's current period needs (its ledger) are kept. 0 keeps them forever.
MUXER_USAGE_RETENTION_DAYS = env.int("MUXER_USAGE_RETENTION_DAYS", default=90)
# --- Request log (billing/request_log.py) ---
# The most JSON kept per request or response body of an organization that logs bodies;
# longer strings are cut with a "…[truncated N characters]" marker.
MUXER_REQUEST_LOG_MAX_BYTES = env.int("MUXER_REQUEST_LOG_MAX_BYTES", default=64 * 1024)
# `celery -A muxer_project beat` runs these; workers load billing.rollups for them.
CELERY_IMPORTS = ["billing.rollups"]
CELERY_BEAT_SCHEDULE = {
    # Today's rollups as the day goes, and yesterday's again for records written late.
    "usage-rollup-recent": {"task": "billing.usage_rollup_recent", "schedule": crontab(minute=5)},
    "usage-retention": {"task": "billing.usage_retention_apply", "schedule": crontab(hour=3, minute=30)},
    # Budget counters back to the ledger's sums; rebuilds any Redis lost.
    "budget-reconcile": {"task": "billing.budget_counters_reconcile", "schedule": crontab(minute="*/10")},
    # Audit events older than MUXER_AUDIT_RETENTION_DAYS (audit/tasks.py).
    "audit-retention": {"task": "audit.audit_retention_apply", "schedule": crontab(hour=3, minute=45)},
    # Kept request/response bodies past each organization's request_log_retention_days (billing/request_log.py).
    "request-log-retention": {"task": "billing.request_log_purge", "schedule": crontab(minute=20)},
}
# --- Audit log (audit/) ---
# Audit events are deleted after this many days (oldest first, leaving an anchored chain). 0 keeps them forever.
MUXER_AUDIT_RETENTION_DAYS = env.int("MUXER_AUDIT_RETENTION_DAYS", default=365)
# Reverse proxies in front of the app that append to X-Forwarded-For. 0 trusts none and
# records REMOTE_ADDR; N records the N-th address from the right (audit log, login lockout).
MUXER_TRUSTED_PROXY_COUNT = env.int("MUXER_TRUSTED_PROXY_COUNT", default=0)

# --- Observability (muxer_project/metrics.py, logs.py, health.py) ------------------------------
# Every log line is JSON (structlog); MUXER_LOG_FORMAT=console prints readable lines for a terminal instead.
LOGGING = logging_config(
    level=env.str("LOG_LEVEL", default="INFO"), json=env.str("MUXER_LOG_FORMAT", default="json") != "console"
)
# /metrics answers a scraper from these networks (CIDRs; empty: none), or one sending
# "Authorization: Bearer <MUXER_METRICS_TOKEN>" from anywhere. Behind a proxy, see MUXER_TRUSTED_PROXY_COUNT.
MUXER_METRICS_TOKEN = env.str("MUXER_METRICS_TOKEN", default="")
MUXER_METRICS_ALLOWED_NETWORKS = env.list("MUXER_METRICS_ALLOWED_NETWORKS", default=["127.0.0.0/8", "::1/128"])
# Budgets reported per scrape (muxer_budget_utilisation_ratio), oldest first; bounds the scrape's work.
MUXER_METRICS_MAX_BUDGETS = env.int("MUXER_METRICS_MAX_BUDGETS", default=2000)
# Each readiness check (database, Redis, broker) gives up after this long, so a frozen store fails fast.
MUXER_READY_TIMEOUT_SECONDS = env.float("MUXER_READY_TIMEOUT_SECONDS", default=2.0)
# Checks whose failure makes /readyz answer 503 (database, redis, broker, providers). None by default: they are
# shared by every instance, so failing readiness on them would take all instances out of rotation at once.
MUXER_READY_REQUIRES = env.list("MUXER_READY_REQUIRES", default=[])
# django-prometheus would query the migration table at start-up; readiness covers the database instead.
PROMETHEUS_EXPORT_MIGRATIONS = False

# --- Shutdown and back-pressure (muxer_project/serve.py, lifespan.py; routing/consumers.py) ---
# On SIGTERM a worker answers /readyz with 503 "draining" at once and keeps serving this long, so a load
# balancer takes it out of rotation before it stops accepting connections.
MUXER_SHUTDOWN_DRAIN_SECONDS = env.float("MUXER_SHUTDOWN_DRAIN_SECONDS", default=5.0)
# Then requests and streams in flight get this long to finish; past it they are cut (and their usage recorded).
MUXER_SHUTDOWN_GRACE_SECONDS = env.float("MUXER_SHUTDOWN_GRACE_SECONDS", default=20.0)
# Proxy requests one worker serves at once; past it the next gets 503 "overloaded" at once. 0: no cap.
MUXER_MAX_INFLIGHT_REQUESTS = env.int("MUXER_MAX_INFLIGHT_REQUESTS", default=1000)
# Threads (each with at most one database connection) for a worker's proxy-side database work: cache loads,
# budget ledger reads, direct usage writes. Set at the ASGI lifespan's startup (muxer_project/lifespan.py).
MUXER_DB_THREADS = env.int("MUXER_DB_THREADS", default=8)
# While the database is unreachable, a process keeps using its cached keys, catalog, budgets and routers for
# this long past their usual lifetime (the usual lifetimes are seconds). 0: never serve a stale copy.
MUXER_STALE_CACHE_SECONDS = env.float("MUXER_STALE_CACHE_SECONDS", default=300.0)
# PostgreSQL: give up connecting after this many seconds (libpq's connect_timeout), so an unreachable
# database fails a request fast rather than holding it and a thread.
if DATABASES["default"]["ENGINE"].endswith("postgresql"):
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault(
        "connect_timeout", env.int("DATABASE_CONNECT_TIMEOUT_SECONDS", default=5)
    )

# --- Production hardening --------------------------------------------------
if PRODUCTION:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_CONTENT_TYPE_NOSNIFF = True
    X_FRAME_OPTIONS = "DENY"
