"""Settings of the example Twitch-like service, all overridable from the environment.

Unset variables mean: two SQLite files beside manage.py, and an embedded moto
Kinesis that ``manage.py mirror_demo`` starts on 127.0.0.1.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import environ

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()

# moto (and localstack) accept any credentials; real ones in the environment win.
for _name, _value in {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}.items():
    os.environ.setdefault(_name, _value)


def _database(var: str, filename: str) -> dict[str, Any]:
    config = env.db_url(var, default=f"sqlite:///{BASE_DIR / filename}")
    if config["ENGINE"] == "django.db.backends.sqlite3":
        # What check django_mirror.W006 asks for: the relay thread writes the outbox
        # while requests write rows, so every transaction takes the write lock up front
        # and waits for it instead of failing (docs/guarantees.md, "Inside your
        # process"). WAL lets readers run beside the writer and makes a commit cost no
        # fsync.
        config["OPTIONS"] = {
            "timeout": 30,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
        }
    elif config["ENGINE"] == "django.db.backends.mysql":
        config["OPTIONS"] = {"charset": "utf8mb4"}
    return config


SECRET_KEY = env("SECRET_KEY", default="example-project-not-secret")
DEBUG = env.bool("DEBUG", default=True)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_mirror",
    "follows",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Each request is a shadow-read scope: once a model is in phase "mirror", a sample of
    # its reads (shadow_read_rate) also runs on the other store, off the request thread.
    "django_mirror.middleware.ShadowReadMiddleware",
]
ROOT_URLCONF = "twitch.urls"
WSGI_APPLICATION = "twitch.wsgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

# "default" holds the truth today; "new" is where the follows data is moving.
DATABASES = {
    "default": _database("DATABASE_URL", "source.sqlite3"),
    "new": _database("TARGET_DATABASE_URL", "target.sqlite3"),
}
# Sends a promoted model's reads and writes to "new", and keeps `migrate --database=new`
# to the tables that move there.
DATABASE_ROUTERS = ["django_mirror.router.MirrorRouter"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"

MIRRORED = {
    "target": "new",
    # The phase every follows model starts in; `manage.py mirror_phase` moves it at run time.
    "phase": env("MIRROR_PHASE", default="capture"),
    # Share of requests whose reads are shadowed once a model is in phase "mirror".
    "shadow_read_rate": env.float("SHADOW_READ_RATE", default=0.1),
}
DJANGO_MIRROR = {
    "STREAM": {
        "BACKEND": "django_mirror.streams.KinesisStream",
        "OPTIONS": {
            "stream_name": env("MIRROR_STREAM", default="follows-ops"),
            "region_name": os.environ["AWS_DEFAULT_REGION"],
            # None = real AWS; mirror_demo points it at an embedded moto server when unset.
            "endpoint_url": env("AWS_ENDPOINT_URL", default=None),
        },
    },
    "SOURCE": "default",
    # Ship from a background thread right after each commit; `mirror_relay` ships the rest.
    "RELAY": {"ON_COMMIT": "thread"},
    "MODELS": {
        "follows.User": MIRRORED,
        "follows.Channel": MIRRORED,
        "follows.Tag": MIRRORED,
        "follows.Follow": MIRRORED,
    },
    # The same follows seen through the service's own interface: its write calls are
    # recorded and replayed on (in phase "mirror": also made live on) a DynamoDB store
    # that keeps one item per channel, and its reads compared (docs/repositories.md).
    "REPOSITORIES": {
        "follows.repositories.FollowRepository": {
            "source": "follows.repositories.SqlFollowRepository",
            "targets": {"dynamodb": "follows.repositories.DynamoFollowRepository"},
            "phase": env("REPOSITORY_PHASE", default="capture"),
            "shadow_read_rate": 1.0,
        },
    },
}
# Where DynamoFollowRepository keeps its items (it creates the table on first use;
# mirror_demo points it at its moto server like the stream).
FOLLOW_REPOSITORY_DYNAMODB = {
    "table_name": env("FOLLOW_REPOSITORY_TABLE", default="twitch-follows-by-channel"),
    "region_name": os.environ["AWS_DEFAULT_REGION"],
    "endpoint_url": env("AWS_ENDPOINT_URL", default=None),
}
if env("MIRROR_TARGET", default="database") == "dynamodb":
    # The follows themselves go to DynamoDB, one item per follow (mirror_setup makes the
    # table; mirror_demo points it at its moto server like the stream).
    DJANGO_MIRROR["MODELS"]["follows.Follow"] = {
        **MIRRORED,
        "target": {
            "BACKEND": "django_mirror.targets.DynamoDBTarget",
            "OPTIONS": {
                "table_name": env("MIRROR_TABLE", default="twitch-follows"),
                "region_name": os.environ["AWS_DEFAULT_REGION"],
                "endpoint_url": env("AWS_ENDPOINT_URL", default=None),
            },
        },
    }
