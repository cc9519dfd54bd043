"""Mirror every concrete model of a suite run, as a project adding django-mirror would.

Runs from the settings module, so before any model class exists: it installs the app
and, as each model class is prepared, gives it mirrored managers and an entry in
``DJANGO_MIRROR["MODELS"]`` (phase ``capture`` or ``mirror``). Models of isolated registries
(``@isolate_apps``) and django-mirror's own are left alone.
"""

from __future__ import annotations

import sys
from typing import Any

from django.db import models
from django.db.models.signals import class_prepared

from django_suite.managers import mirror_managers

APP = "django_mirror"
PHASES = ("capture", "mirror")


def model_options(phase: str, target: str) -> dict[str, Any]:
    """Every model's ``MODELS`` entry: in phase ``mirror`` each read in a shadow-read
    scope (the runner opens one for the whole run) is also run on the target."""
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}; one of {', '.join(PHASES)}")
    options: dict[str, Any] = {"target": target, "phase": phase}
    if phase == "mirror":
        options["shadow_read_rate"] = 1.0
    return options


def install_app() -> None:
    """Add django-mirror to the apps ``runtests.py`` always installs.

    ``runtests.py`` replaces ``INSTALLED_APPS`` with its own list (and appends the test
    modules to it) after reading the settings, so that list is the one to extend.
    """
    main = sys.modules.get("__main__")
    always = getattr(main, "ALWAYS_INSTALLED_APPS", None)
    if always is None:
        raise RuntimeError("django_suite settings are meant for Django's tests/runtests.py")
    if APP not in always:
        always.append(APP)


def mirror_every_model(model_options: dict[str, dict[str, Any]], options: dict[str, Any]) -> None:
    """From now on, each concrete model prepared in the global registry is mirrored with
    ``options``: its label is added to ``model_options`` (``DJANGO_MIRROR["MODELS"]``)."""

    def on_class_prepared(sender: type[models.Model], **kwargs: Any) -> None:
        from django.apps import apps

        opts = sender._meta
        if opts.apps is not apps or opts.app_label == APP or opts.proxy or opts.auto_created:
            return
        mirror_managers(sender)
        model_options.setdefault(opts.label, dict(options))

    class_prepared.connect(on_class_prepared, weak=False, dispatch_uid="django_suite.mirror")
