"""The paths users write in settings and imports keep working, wherever the code behind
them lives in the package (docs/architecture.md; DESIGN's public contract)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from django.db import models
from django.utils.module_loading import import_string

from django_mirror.streams.base import Stream
from django_mirror.targets.base import Target

PUBLIC_PATHS = [
    "django_mirror.middleware.ShadowReadMiddleware",
    "django_mirror.router.MirrorRouter",
    "django_mirror.streams.KinesisStream",
    "django_mirror.targets.Target",
    "django_mirror.targets.DatabaseTarget",
    "django_mirror.targets.DynamoDBTarget",
    "django_mirror.targets.CacheTarget",
    "django_mirror.MirroredQuerySet",
    "django_mirror.MirroredManager",
    "django_mirror.paused",
    "django_mirror.capture.paused",
    "django_mirror.capture.CaptureError",
    "django_mirror.shadow.shadow_reads",
    "django_mirror.repositories.repository",
    "django_mirror.repositories.write",
    "django_mirror.repositories.read",
    "django_mirror.repositories.passthrough",
    "django_mirror.repositories.get",
    "django_mirror.models.MismatchRecord",
    "django_mirror.models.DeadLetter",
    "django_mirror.models.MirrorState",
]


@pytest.mark.parametrize("path", PUBLIC_PATHS)
def test_every_public_path_imports(path: str) -> None:
    assert import_string(path) is not None


def test_public_classes_are_what_settings_expect() -> None:
    assert issubclass(import_string("django_mirror.MirroredQuerySet"), models.QuerySet)
    assert issubclass(import_string("django_mirror.MirroredManager"), models.Manager)
    assert issubclass(import_string("django_mirror.streams.KinesisStream"), Stream)
    for name in ("DatabaseTarget", "DynamoDBTarget", "CacheTarget"):
        assert issubclass(import_string(f"django_mirror.targets.{name}"), Target)


def test_importing_the_package_in_settings_loads_no_orm() -> None:
    """``import django_mirror`` happens in settings.py, before Django is set up."""
    code = (
        "import sys, django_mirror; "
        "loaded = [m for m in sys.modules if m.startswith(('django.db.models', 'django_mirror.'))]; "
        "print(loaded)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
