"""Each model's phase at run time, and the rules for changing it.

Settings give every model its default phase; a ``MirrorState`` row (set from the admin
or ``mirror_phase``) overrides it without a deploy. Each process re-reads the rows
every ``PHASES["REFRESH"]`` seconds on a watcher thread of its own, so a change is
seen everywhere within that time and no request ever waits on, or shares a
transaction with, that read.

A move forward must be safe: to ``mirror`` only once replay has caught up and a recent
``mirror_verify`` found no difference; to ``promoted`` only from ``mirror`` with no
confirmed mismatch for a while. Forcing past a failed precondition takes a reason.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from django.db import connections, models, transaction
from django.db.models import F, Max
from django.utils import timezone

from django_mirror.config import conf, graph
from django_mirror.core import failures
from django_mirror.core.background import ServiceThread

if TYPE_CHECKING:
    from django_mirror.models import MirrorState

logger = logging.getLogger("django_mirror.phases")

ORDER = {phase: rank for rank, phase in enumerate(conf.PHASES)}


class PhaseRefused(Exception):
    """A phase change whose preconditions do not hold (and that was not forced)."""

    def __init__(self, label: str, phase: str, failed: list[Precondition]) -> None:
        self.failed = failed
        reasons = "; ".join(f"{p.name}: {p.detail}" for p in failed)
        super().__init__(f"{label} cannot move to {phase!r}: {reasons}")


@dataclass(frozen=True)
class Precondition:
    name: str
    ok: bool
    detail: str


# --- reading the run-time phases -----------------------------------------------------------


_reading = failures.RepeatedFailures("phases", "could not read the run-time phases")


def refresh() -> bool:
    """Read the overrides into ``conf.overrides`` now; False if the table could not be read."""
    from django_mirror.models import MirrorState

    try:
        rows = MirrorState.objects.using(conf.source_alias()).values_list(
            "model", "phase", "generation"
        )
        conf.overrides = {label.lower(): (phase, gen) for label, phase, gen in rows}
    except Exception:  # not migrated yet, database away: settings keep deciding
        _reading.failed()
        return False
    _reading.succeeded()
    return True


class Watcher(ServiceThread):
    """Re-reads the overrides every ``PHASES["REFRESH"]`` seconds on a thread of its own
    (``runtime`` starts it), from the first time a phase is asked for in this process."""

    name = "phase watcher"
    thread_name = "django-mirror-phases"

    def __init__(self, needed: bool = False) -> None:
        super().__init__()
        #: Set on the first phase lookup: before it, the database is not touched.
        self.needed = threading.Event()
        if needed:
            self.needed.set()
        self.loaded = threading.Event()

    def stop(self, timeout: float) -> None:
        self.needed.set()  # a watcher never needed is waiting for this
        super().stop(timeout)

    def after_fork(self) -> None:
        """A forked worker keeps the phases it inherited and goes on re-reading them."""
        self.__init__(needed=self.needed.is_set())  # type: ignore[misc]

    def first_lookup(self, wait: float = 1.0) -> None:
        """The first phase lookup of the process: give the watcher ``wait`` seconds for a
        first read, so the first write already runs in the current phase."""
        self.needed.set()
        self.loaded.wait(wait)

    def _run(self) -> None:
        self.needed.wait()
        while not self.stopping:
            refresh()  # never raises
            self.loaded.set()
            try:
                # Between reads, hold no connection: a test database can be dropped and
                # a server restarted without this thread in the way.
                connections.close_all()
            except Exception:  # the thread outlives any one failure
                _reading.failed()
            self.wake.wait(conf.get_settings().phases.refresh)
            self.wake.clear()


watcher = Watcher()
conf.first_lookup_hooks.append(watcher.first_lookup)


def reload() -> None:
    """Re-read now in this process, and wake the watcher (after a change made here)."""
    refresh()
    watcher.wake.set()


# --- preconditions -------------------------------------------------------------------------


def replay_lag_seconds() -> float | None:
    """The largest replay lag over the shards, in seconds; None before replay ever ran."""
    from django_mirror.models import ShardCheckpoint

    lag = (
        ShardCheckpoint.objects.using(conf.source_alias())
        .filter(finished=False)
        .aggregate(lag=Max("millis_behind"))["lag"]
    )
    if lag is None and not ShardCheckpoint.objects.using(conf.source_alias()).exists():
        return None
    return (lag or 0) / 1000


def _group_check(config: conf.ModelConfig, phase: str, moving: Iterable[str]) -> list[Precondition]:
    """A move must not leave part of the model's group behind in another phase (a cascade
    would then run on one primary and miss rows on the other)."""
    group = graph.group_of(config.label)
    if len(group.members) == 1:
        return []
    behind = graph.left_behind(moving, phase)
    return [
        Precondition(
            "group moves together",
            not behind,
            "no tied model stays in another phase"
            if not behind
            else f"tied by foreign keys to {', '.join(behind)}, which would stay behind; "
            f"move them together (mirror_phase --group {config.label} {phase})",
        )
    ]


def preconditions(
    config: conf.ModelConfig, phase: str, moving: Iterable[str] | None = None
) -> list[Precondition]:
    """What must hold before ``config``'s model moves to ``phase`` together with the
    models ``moving`` (default: alone). A step back needs only its group with it: it is
    how a migration is rolled back."""
    from django_mirror.models import MismatchRecord, VerifyRun

    options = conf.get_settings().phases
    now = timezone.now()
    checks = _group_check(config, phase, moving if moving is not None else [config.label])
    if phase == "mirror" and ORDER[config.phase] < ORDER["mirror"]:
        lag = replay_lag_seconds()
        limit = options.max_replay_lag
        checks.append(
            Precondition(
                "replay caught up",
                lag is not None and lag <= limit,
                "replay has never run"
                if lag is None
                else f"replay lag {lag:.1f} s (at most {limit:.0f} s)",
            )
        )
        within = dt.timedelta(seconds=options.verify_within)
        last = (
            VerifyRun.objects.using(conf.source_alias())
            .filter(model=config.label, finished_at__isnull=False)
            .order_by("-finished_at")
            .first()
        )
        fresh = last is not None and now - last.finished_at <= within
        checks.append(
            Precondition(
                "clean verify",
                fresh and last is not None and last.clean,
                "no mirror_verify yet"
                if last is None
                else f"last mirror_verify {last.finished_at:%Y-%m-%d %H:%M} UTC found "
                f"{last.differences} differences" + ("" if fresh else f" (older than {within})"),
            )
        )
    if phase == "promoted":
        checks.append(
            Precondition("in mirror", config.phase == "mirror", f"phase is {config.phase!r}")
        )
        from django.conf import settings

        routed = "django_mirror.router.MirrorRouter" in getattr(settings, "DATABASE_ROUTERS", [])
        checks.append(
            Precondition(
                "router installed",
                routed and config.target_alias is not None,
                "MirrorRouter in DATABASE_ROUTERS"
                if routed
                else "add django_mirror.router.MirrorRouter to DATABASE_ROUTERS",
            )
        )
        since = now - dt.timedelta(seconds=options.clean_for)
        confirmed = (
            MismatchRecord.objects.using(conf.source_alias())
            .filter(
                model=config.label,
                status=MismatchRecord.Status.CONFIRMED,
                kind__in=[MismatchRecord.Kind.READ, MismatchRecord.Kind.VERIFY],
                created_at__gte=since,
                dismissed_at__isnull=True,
            )
            .count()
        )
        checks.append(
            Precondition(
                "no confirmed mismatch",
                confirmed == 0,
                f"{confirmed} confirmed, undismissed mismatches since {since:%Y-%m-%d %H:%M} UTC",
            )
        )
    return checks


# --- changing a phase ----------------------------------------------------------------------


def _key_tables(config: conf.ModelConfig) -> list[tuple[str, str]]:
    """(table, key column) of the model and its many-to-many tables with generated keys."""
    tables = []
    for other in conf.mirrored_models().values():
        if other.model is None or config.label not in (other.label, other.owner):
            continue
        pk = other.model._meta.pk
        if isinstance(pk, models.AutoField):  # Big/SmallAutoField subclass it
            tables.append((other.model._meta.db_table, pk.column))
    return tables


def advance_keys(config: conf.ModelConfig, to: str, previous: str) -> None:
    """Start the new primary store's generated keys past every key either store holds,
    plus ``PHASES["KEY_GAP"]``.

    Rows reached it with their keys set (copy, replay), which PostgreSQL's sequences do
    not notice; and processes that have not yet seen the switch keep inserting on the
    old store for a few seconds, which the gap leaves room for.
    """
    gap = conf.get_settings().phases.key_gap
    for table, column in _key_tables(config):
        highest = 0
        for alias in (to, previous):
            qn = connections[alias].ops.quote_name
            with connections[alias].cursor() as cursor:
                cursor.execute(f"SELECT MAX({qn(column)}) FROM {qn(table)}")
                highest = max(highest, cursor.fetchone()[0] or 0)
        start = highest + gap
        connection = connections[to]
        qn = connection.ops.quote_name
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute(
                    "SELECT setval(pg_get_serial_sequence(%s, %s), %s)", [table, column, start]
                )
            elif connection.vendor == "mysql":
                cursor.execute(f"ALTER TABLE {qn(table)} AUTO_INCREMENT = {int(start) + 1}")
            elif connection.vendor == "sqlite":
                cursor.execute("DELETE FROM sqlite_sequence WHERE name = %s", [table])
                cursor.execute(
                    "INSERT INTO sqlite_sequence (name, seq) VALUES (%s, %s)", [table, start]
                )


def change_phase(
    label: str, phase: str, *, by: str = "", reason: str = "", force: bool = False
) -> MirrorState:
    """Move one model to ``phase`` at run time (see ``change_phases``); its ``MirrorState``."""
    (state,) = change_phases([label], phase, by=by, reason=reason, force=force)
    return state


def change_phases(
    labels: Sequence[str], phase: str, *, by: str = "", reason: str = "", force: bool = False
) -> list[MirrorState]:
    """Move models to ``phase`` together at run time, every process following within
    seconds; all move or none does.

    Raises ``PhaseRefused`` when a precondition of any fails (a split group included),
    unless ``force`` (which needs a ``reason``). Returns the ``MirrorState`` rows.
    """
    from django_mirror.models import MirrorState

    if phase not in conf.PHASES:
        raise ValueError(f"unknown phase {phase!r}; use one of {', '.join(conf.PHASES)}")
    moving: list[conf.ModelConfig] = []
    for label in labels:
        config = conf.config_for_label(label)
        if config is None or config.owner is not None:
            raise LookupError(f"{label} is not a mirrored model")
        if config not in moving:
            moving.append(config)
    names = [c.label for c in moving]
    failed = {c.label: [p for p in preconditions(c, phase, names) if not p.ok] for c in moving}
    failed = {label: found for label, found in failed.items() if found}
    if failed and not force:
        label, found = next(iter(failed.items()))
        if len(failed) > 1 or len(moving) > 1:
            found = [replace(p, name=f"{lbl}: {p.name}") for lbl, ps in failed.items() for p in ps]
            label = ", ".join(names)
        raise PhaseRefused(label, phase, found)
    if force and failed and not reason.strip():
        raise ValueError("forcing a phase change past a failed precondition needs a reason")
    for config in moving:
        new_primary = replace(config, phase=phase).primary_alias
        if new_primary != config.primary_alias:
            advance_keys(config, new_primary, config.primary_alias)
    using = conf.source_alias()
    states = []
    with transaction.atomic(using=using):
        for config in moving:
            state, created = (
                MirrorState.objects.using(using)
                .select_for_update()
                .get_or_create(
                    model=config.label,
                    defaults={"phase": phase, "generation": config.generation + 1},
                )
            )
            if not created:
                MirrorState.objects.using(using).filter(pk=state.pk).update(
                    generation=F("generation") + 1
                )
                state.refresh_from_db(using=using, fields=["generation"])
            state.phase = phase
            state.changed_at = timezone.now()
            state.changed_by = by[:150]
            state.reason = reason
            state.forced = config.label in failed
            state.save(using=using)
            states.append(state)
    for config in moving:
        logger.info(
            "django-mirror: %s moved from %s to %s by %s%s",
            config.label,
            config.phase,
            phase,
            by or "?",
            " (forced)" if config.label in failed else "",
        )
    reload()
    return states
