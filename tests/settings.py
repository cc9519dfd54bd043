"""Test settings: two SQLite files by default; DATABASE_URL / TARGET_DATABASE_URL switch
both aliases to PostgreSQL or MariaDB."""

from __future__ import annotations

import os
from pathlib import Path

import environ

HERE = Path(__file__).resolve().parent
env = environ.Env()

for name, value in {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}.items():
    os.environ.setdefault(name, value)


#: Test databases are named per test run (inherited by subprocesses through the
#: environment), so runs side by side on one machine never share a database.
RUN = os.environ.setdefault("MIRROR_TEST_RUN", str(os.getpid()))


def _database(var: str, name: str) -> dict:
    config = env.db_url(var, default=f"sqlite:///{HERE / (name + '.sqlite3')}")
    config["TEST"] = {"NAME": f"test_{name}_{RUN}"}
    if config["ENGINE"] == "django.db.backends.sqlite3":
        # Files, not memory: relay threads and replay subprocesses must see the data.
        config["TEST"]["NAME"] = str(HERE / f"test_{name}_{RUN}.sqlite3")
        # What check W006 asks of a SQLite source: the tests' own transactions read
        # before they write. Django's defaults are tested too (tests/test_host_safety.py).
        config["OPTIONS"] = {"transaction_mode": "IMMEDIATE", "timeout": 20}
    if config["ENGINE"] == "django.db.backends.mysql":
        config["OPTIONS"] = {"charset": "utf8mb4"}
        config["TEST"].update(CHARSET="utf8mb4", COLLATION="utf8mb4_bin")
    if os.environ.get("MIRROR_TEST_USE_TEST_DB"):
        # Commands a test runs in a subprocess (tests/test_crash.py) use its test databases.
        config["NAME"] = config["TEST"]["NAME"]
    return config


DATABASES = {
    "default": _database("DATABASE_URL", "source"),
    "new": _database("TARGET_DATABASE_URL", "target"),
}
# A read replica of the source, as Django's multi-database docs set one up (only
# tests/test_host_safety.py routes reads to it).
DATABASES["replica"] = {**DATABASES["default"], "TEST": {"MIRROR": "default"}}

DATABASE_ROUTERS = ["django_mirror.router.MirrorRouter"]
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    # A cache target for the convergence property test (rows must not be evicted).
    "mirror": {
        "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
        "LOCATION": "mirror",
        "OPTIONS": {"MAX_ENTRIES": 1_000_000},
    },
}

SECRET_KEY = "django-mirror-tests"
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
ROOT_URLCONF = "tests.urls"
STATIC_URL = "/static/"
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_mirror",
    "tests.testapp",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django_mirror.middleware.ShadowReadMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

MIRRORED = {"target": "new", "phase": "capture"}
DJANGO_MIRROR = {
    "STREAM": {
        "BACKEND": "django_mirror.streams.KinesisStream",
        "OPTIONS": {
            "stream_name": os.environ.get("MIRROR_STREAM_NAME", "mirror-test"),
            "region_name": "us-east-1",
            "endpoint_url": os.environ.get("MIRROR_STREAM_ENDPOINT") or None,
            "base_delay": 0.001,
            "max_delay": 0.01,
        },
    },
    "SOURCE": "default",
    # RELAY and SHADOW as a new project has them: the relay thread ships after every
    # commit, the stats writer stores the dashboard's figures every 10 s.
    "REPLAY": {"IDLE_SLEEP": 0.01},
    **(
        {"RELAY": {"LEASE_SECONDS": float(os.environ["MIRROR_TEST_LEASE_SECONDS"])}}
        if "MIRROR_TEST_LEASE_SECONDS" in os.environ  # a crash test's short lease
        else {}
    ),
    "MODELS": {
        "testapp.Author": MIRRORED,
        "testapp.Tag": MIRRORED,
        "testapp.Book": {**MIRRORED, "redact_fields": ["isbn"]},
        "testapp.Shelf": MIRRORED,
        "testapp.ShelfBook": MIRRORED,
        "testapp.AllTypes": MIRRORED,
        "testapp.BigKey": MIRRORED,
        "testapp.Counter": MIRRORED,
        "testapp.Secret": {**MIRRORED, "exclude_fields": ["token"]},
        "testapp.Place": MIRRORED,
    },
}
