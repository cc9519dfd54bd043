"""django-mirror's side of a mirrored run, once every test app's models exist.

``runtests.py`` loads the test apps after django-mirror's ``ready()`` ran, so the
mirrored-model cache and capture's receivers are rebuilt here. A model that
django-mirror's own system checks refuse (a primary key type it cannot carry, say) is
taken out of ``MODELS``: a project could not mirror it either. Events are counted as
they are written to the outbox, in a counter the forked workers share.

In phase ``mirror`` every test may also use the target alias (live writes go there on
the test's thread, which Django allows only for the aliases a test names), and the
whole run is one shadow-read scope: each read of a mirrored model is run again on the
target by the pool and compared.
"""

from __future__ import annotations

import multiprocessing
from contextlib import nullcontext
from typing import Any

from django.conf import settings
from django.core.checks import ERROR
from django.test.utils import iter_test_cases

from django_suite.databases import TARGET_ALIAS

_events: Any = None
#: Metrics of phase ``mirror`` counted over every process of the run, by name.
COUNTED = (
    "read.compared",
    "read.match",
    "read.mismatch",
    "read.target_errors",
    "read.timeouts",
    "write.applied",
    "write.mismatch",
)
_counters: dict[str, Any] = {}


def enabled() -> bool:
    return bool(getattr(settings, "DJANGO_MIRROR", None))


def prepare() -> dict[str, list[str]]:
    """Drop the models the checks refuse, connect capture for the rest, count events.

    Returns ``{label: [check ids]}`` of the models left out.
    """
    from django_mirror import checks
    from django_mirror.capture import signals
    from django_mirror.checks.models import model_errors
    from django_mirror.config import conf

    source = conf.source_alias()
    models = settings.DJANGO_MIRROR["MODELS"]
    refused: dict[str, set[str]] = {}
    for label, opts in models.items():
        for error in model_errors(label, opts, source):
            if error.level >= ERROR:
                refused.setdefault(label, set()).add(error.id)
    conf.clear_cache()
    # E027 (database-level on_delete) and E028 (values that cannot be carried) are
    # checked over the fields of every mirrored model.
    for error in [*checks.check_database_on_delete(), *checks.check_field_values()]:
        if error.level >= ERROR:
            refused.setdefault(error.obj.model._meta.label, set()).add(error.id)
    for label in refused:
        models.pop(label, None)
    conf.clear_cache()
    signals.connect_signals()
    _count_events()
    return {label: sorted(ids) for label, ids in refused.items()}


def phase() -> str:
    """The phase every model is mirrored in ("" in a stock run)."""
    if not enabled():
        return ""
    return next(iter(settings.DJANGO_MIRROR["MODELS"].values()), {}).get("phase", "")


def shadowing() -> bool:
    return phase() == "mirror"


def add_target(suite: Any) -> None:
    """Let every test that uses a database use the target too: it is set up (created,
    migrated, cloned per worker), wrapped in the test's transaction and flushed after
    a ``TransactionTestCase`` like the aliases the test names.

    Not for tests with ``fixtures``: Django loads them into every alias a test names,
    and a fixture named for one database (``multidb.default.json``) is then missing on
    the target. Their live writes are refused (counted, left to replay) instead.
    """
    for test in iter_test_cases(suite):
        cls = type(test)
        names = getattr(cls, "databases", None)
        if getattr(cls, "fixtures", None):
            continue
        if names and names != "__all__" and TARGET_ALIAS not in names:
            cls.databases = {*names, TARGET_ALIAS}


def shadow_scope() -> Any:
    """The run's shadow-read scope (forked workers inherit it), or nothing to do."""
    if not shadowing():
        return nullcontext()
    from django_mirror.shadow.scope import shadow_reads

    return shadow_reads()


def mirrored_model_count() -> int:
    return len(settings.DJANGO_MIRROR["MODELS"]) if enabled() else 0


def _count_events() -> None:
    """Wrap ``outbox.write`` to add each payload's events to a process-shared counter."""
    global _events
    from django_mirror.capture import outbox

    if _events is not None:
        return
    _events = multiprocessing.Value("q", 0)
    write = outbox.write

    def counting_write(connection: Any, label: str, payload: Any, *args: Any, **kw: Any) -> None:
        write(connection, label, payload, *args, **kw)
        with _events.get_lock():
            _events.value += len(payload.ops)

    outbox.write = counting_write
    _count_metrics()


def _count_metrics() -> None:
    """Wrap ``reporting.incr`` to add the ``COUNTED`` metrics to process-shared counters."""
    from django_mirror.observability import reporting

    for name in COUNTED:
        _counters[name] = multiprocessing.Value("q", 0)
    incr = reporting.incr

    def counting_incr(name: str, value: int = 1, *args: Any, **kw: Any) -> None:
        incr(name, value, *args, **kw)
        counter = _counters.get(name)
        if counter is not None:
            with counter.get_lock():
                counter.value += value

    reporting.incr = counting_incr


def counters() -> dict[str, int]:
    return {name: int(counter.value) for name, counter in _counters.items()}


def events_written() -> int:
    """Events written to the outbox so far, by every process of the run (forked
    workers share the counter); most were rolled back with their test."""
    return int(_events.value) if _events is not None else 0


def stop_threads() -> None:
    """End django-mirror's background threads, closing their connections, before the
    test databases are dropped (PostgreSQL refuses to drop one still in use)."""
    from django_mirror import runtime

    runtime.stop()
