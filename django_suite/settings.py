"""Settings module for ``runtests.py --settings=django_suite.settings``.

Django's ``tests/test_sqlite.py`` plus what the environment asks (set by
``python -m django_suite``): ``DJANGO_SUITE_BACKEND`` (sqlite | postgresql),
``DJANGO_SUITE_PHASE`` (unset: stock; ``capture`` or ``mirror``: every model mirrored
in that phase, the stream at ``DJANGO_SUITE_STREAM_ENDPOINT``), ``DJANGO_SUITE_RESULTS``
(where the runner writes each test's outcome).
"""

from __future__ import annotations

import os
from typing import Any

from django_suite import databases

BACKEND = os.environ.get("DJANGO_SUITE_BACKEND", "sqlite")
PHASE = os.environ.get("DJANGO_SUITE_PHASE", "")
MIRRORED = bool(PHASE)

DATABASES = databases.databases(BACKEND, MIRRORED)
SECRET_KEY = "django_tests_secret_key"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
USE_TZ = False
TEST_RUNNER = "django_suite.runner.RecordingRunner"

if MIRRORED:
    from django_suite import bootstrap

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        os.environ.setdefault(name, "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    MODELS: dict[str, dict[str, Any]] = {}
    DJANGO_MIRROR = {
        "STREAM": {
            "BACKEND": "django_mirror.streams.KinesisStream",
            "OPTIONS": {
                "stream_name": os.environ.get("DJANGO_SUITE_STREAM", "djsuite-ops"),
                "region_name": "us-east-1",
                # Never AWS: the moto server `python -m django_suite` runs on 127.0.0.1.
                "endpoint_url": os.environ["DJANGO_SUITE_STREAM_ENDPOINT"],
            },
        },
        "SOURCE": "default",
        "MODELS": MODELS,
    }
    bootstrap.install_app()
    bootstrap.mirror_every_model(MODELS, bootstrap.model_options(PHASE, databases.TARGET_ALIAS))
