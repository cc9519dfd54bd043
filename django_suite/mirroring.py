"""django-mirror's side of a mirrored run, once every test app's models exist.

``runtests.py`` loads the test apps after django-mirror's ``ready()`` ran, so the
mirrored-model cache and capture's receivers are rebuilt here. A model that
django-mirror's own system checks refuse (a primary key type it cannot carry, say) is
taken out of ``MODELS``: a project could not mirror it either. Events are counted as
they are written to the outbox, in a counter the forked workers share.
"""

from __future__ import annotations

import multiprocessing
from typing import Any

from django.conf import settings
from django.core.checks import ERROR

_events: Any = None


def enabled() -> bool:
    return bool(getattr(settings, "DJANGO_MIRROR", None))


def prepare() -> dict[str, list[str]]:
    """Drop the models the checks refuse, connect capture for the rest, count events.

    Returns ``{label: [check ids]}`` of the models left out.
    """
    from django_mirror import capture, checks, conf

    source = conf.source_alias()
    models = settings.DJANGO_MIRROR["MODELS"]
    refused: dict[str, list[str]] = {}
    for label, opts in list(models.items()):
        ids = sorted({e.id for e in checks._check_model(label, opts, source) if e.level >= ERROR})
        if ids:
            refused[label] = ids
            del models[label]
    conf.clear_cache()
    capture.connect_signals()
    _count_events()
    return refused


def mirrored_model_count() -> int:
    return len(settings.DJANGO_MIRROR["MODELS"]) if enabled() else 0


def _count_events() -> None:
    """Wrap ``outbox.write`` to add each payload's events to a process-shared counter."""
    global _events
    from django_mirror import outbox

    if _events is not None:
        return
    _events = multiprocessing.Value("q", 0)
    write = outbox.write

    def counting_write(connection: Any, label: str, payload: Any, *args: Any, **kw: Any) -> None:
        write(connection, label, payload, *args, **kw)
        with _events.get_lock():
            _events.value += len(payload.ops)

    outbox.write = counting_write


def events_written() -> int:
    """Events written to the outbox so far, by every process of the run (forked
    workers share the counter); most were rolled back with their test."""
    return int(_events.value) if _events is not None else 0


def stop_threads() -> None:
    """End django-mirror's background threads, closing their connections, before the
    test databases are dropped (PostgreSQL refuses to drop one still in use)."""
    from django_mirror import runtime

    runtime.stop()
