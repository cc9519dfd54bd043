"""Django settings for the benchmarks: a source and a target alias on SQLite or PostgreSQL.

``BENCH_DATABASE`` picks the engine (``sqlite`` or ``postgres``) and ``BENCH_DIR`` the
directory of the SQLite files, so each benchmark process starts from fresh databases.
"""

from __future__ import annotations

import os
from pathlib import Path

ENGINE = os.environ.get("BENCH_DATABASE", "sqlite")
BENCH_DIR = Path(os.environ.get("BENCH_DIR", Path(__file__).resolve().parent / "results"))
PG_URL = os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432")

#: WAL with ``synchronous=NORMAL`` is how SQLite is run when write speed matters; commits
#: then cost no fsync, so any extra work capture or replay does shows up in the ratios.
SQLITE_PRAGMAS = "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"


def _database(name: str) -> dict:
    if ENGINE == "postgres":
        host_port = PG_URL.split("@", 1)[1]
        host, _, port = host_port.partition(":")
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": f"bench_{name}",
            "USER": PG_URL.split("//", 1)[1].split("@", 1)[0],
            "HOST": host,
            "PORT": port or "5432",
        }
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(BENCH_DIR / f"bench_{name}.sqlite3"),
        "OPTIONS": {"timeout": 30, "init_command": SQLITE_PRAGMAS},
    }


DATABASES = {"default": _database("source"), "new": _database("target")}

SECRET_KEY = "django-mirror-benchmarks"
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django_mirror",
    "benchmarks.benchapp",
]

DJANGO_MIRROR = {
    "STREAM": {
        "BACKEND": "django_mirror.streams.KinesisStream",
        "OPTIONS": {"stream_name": "mirror-bench", "region_name": "us-east-1"},
    },
    "SOURCE": "default",
    # Shipping runs in ``mirror_relay``, a separate process in production: not measured.
    "RELAY": {"ON_COMMIT": "off"},
    "MODELS": {"benchapp.Follow": {"target": "new", "phase": "capture"}},
}
