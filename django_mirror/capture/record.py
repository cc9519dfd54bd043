"""Turn ORM writes to mirrored models into events in the source database's outbox.

Every write path ends in :func:`record`, which re-reads the rows the write touched
(inside the same transaction, under the write's row locks) and stores their
after-images as one ``OutboxBatch`` row. Because the outbox row commits or rolls
back with the write, the stream gets an event for every committed write and for
no rolled-back one; after commit a relay ships the batch. The ORM's signals and the
save wrapper that call it are connected in ``signals``.
"""

from __future__ import annotations

import contextvars
import functools
import itertools
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.db import connections, models, router, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils import timezone

from django_mirror.capture import outbox
from django_mirror.config import conf
from django_mirror.core import images
from django_mirror.core.batching import chunks, keys_per_statement, unique
from django_mirror.core.events import encode_column, encode_json
from django_mirror.core.locking import write_lock_first
from django_mirror.observability import reporting

_paused: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "django_mirror_paused", default=False
)


class CaptureError(RuntimeError):
    """A write to a mirrored model cannot be captured; the write is rolled back with it."""


@contextmanager
def paused() -> Iterator[None]:
    """Writes in this block (this thread or task only) are not captured."""
    token = _paused.set(True)
    try:
        yield
    finally:
        _paused.reset(token)


def capture_alias(config: conf.ModelConfig) -> str:
    """The alias whose writes are the truth for this model and so get captured."""
    return config.primary_alias


def active_config(model: type[models.Model], using: str | None) -> conf.ModelConfig | None:
    """The model's config when a write to it on ``using`` must be captured now, else None."""
    config = conf.model_config(model)
    if config is None or not config.capturing or _paused.get():
        return None
    alias = capture_alias(config)
    if (using or router.db_for_write(model)) != alias:
        return None
    if alias in conf.log_captured_aliases():
        return None  # mirror_capture reads this alias's log: the ORM must not also
    return config


class _Transaction:
    """What capture keeps per source transaction: its id and what it captured, reported
    (and shipped) only once it commits. It is its own after-commit callback."""

    __slots__ = ("id", "using", "counts", "hooks")

    def __init__(self, using: str) -> None:
        self.id = next(_transaction_ids)
        self.using = using
        self.counts: dict[str, int] = {}
        #: The connection's ``run_on_commit`` list that holds this callback.
        self.hooks: list[Any] | None = None

    def count(self, label: str, events: int) -> None:
        self.counts[label] = self.counts.get(label, 0) + events

    def __call__(self) -> None:
        _after_commit(self.using, self.counts)


def _transaction_id_source() -> Iterator[str]:
    """Unique transaction ids, cheaper than a ``uuid4()`` per transaction: a random
    per-process prefix and a counter, still 32 hex digits."""
    prefix = uuid.uuid4().hex[:20]
    for n in itertools.count():
        yield f"{prefix}{n:012x}"


_transaction_ids = _transaction_id_source()


def after_fork() -> None:
    """A forked worker numbers its transactions under a prefix of its own."""
    global _transaction_ids
    _transaction_ids = _transaction_id_source()


def _transaction(connection: BaseDatabaseWrapper) -> _Transaction:
    """The capture state of the open transaction; also arms the after-commit hook."""
    state: _Transaction | None = getattr(connection, "_mirror_tx", None)
    if state is not None:
        hooks = connection.run_on_commit
        # Django never takes a callback out of the list in place: a commit, a rollback
        # or a savepoint's rollback puts a new list there. The same list therefore still
        # holds ours; another list may still (a savepoint rolled back after ours was
        # registered, outside it) or may not (a new transaction).
        if state.hooks is hooks:
            return state
        if any(entry[1] is state for entry in hooks):
            state.hooks = hooks
            return state
    state = _Transaction(connection.alias)
    # Robust: should ours fail after all, Django still runs the app's later callbacks.
    connection.on_commit(state, robust=True)
    state.hooks = connection.run_on_commit
    connection._mirror_tx = state
    return state


def uncommitted_events(using: str) -> bool:
    """The open transaction on ``using`` has captured writes not yet committed."""
    connection = connections[using]
    state = getattr(connection, "_mirror_tx", None)
    return (
        state is not None
        and connection.in_atomic_block
        and any(entry[1] is state for entry in connection.run_on_commit)
    )


#: Called with the alias after every transaction that captured events commits: capture
#: announces, the relay listens (``apps.py`` subscribes it), so capture never calls up.
committed_hooks: list[Callable[[str], None]] = []


def _after_commit(using: str, counts: dict[str, int]) -> None:
    try:  # not reporting.guarded(): a context manager costs more than the rest here
        for label, count in counts.items():
            reporting.incr("captured", count, label)
        for hook in committed_hooks:
            hook(using)
    except Exception:
        with reporting.guarded("after-commit bookkeeping failed; the outbox keeps the events"):
            raise


def read_rows(
    model: type[models.Model], pks: Iterable[Any], using: str, lock: bool = False
) -> list[dict[str, Any]]:
    """Rows by primary key as ``{attname: value}`` the way the database holds them now."""
    pk_list = unique(pks)
    if not pk_list:
        return []
    attnames = [f.attname for f in model._meta.concrete_fields]
    lock = lock and connections[using].features.has_select_for_update
    rows: list[dict[str, Any]] = []
    for chunk in chunks(pk_list, keys_per_statement(using)):
        qs = models.QuerySet(model=model, using=using).filter(pk__in=chunk).order_by()
        qs = qs.values(*attnames)
        if lock:
            qs = qs.select_for_update()
        rows.extend(qs)
    return rows


@dataclass(frozen=True)
class _Shape:
    """What capture needs to know of one model's rows, worked out once per model."""

    label: str
    fields: tuple[models.Field, ...]
    columns: tuple[str, ...]
    pk_attname: str
    pk: models.Field
    #: How to image a whole-row save from its instance; None when it must be re-read.
    imager: images.Imager | None


@functools.cache
def _shape(model: type[models.Model], exclude: tuple[str, ...]) -> _Shape:
    """The image of ``model``'s rows: its concrete fields less ``exclude``, in column order."""
    model = model._meta.concrete_model  # proxies write their concrete model's table
    fields = tuple(
        f for f in model._meta.concrete_fields if f.name not in exclude and f.attname not in exclude
    )
    return _Shape(
        label=model._meta.label,
        fields=fields,
        columns=tuple(f.column for f in fields),
        pk_attname=model._meta.pk.attname,
        pk=model._meta.pk,
        imager=images.plan(model, fields),  # type: ignore[arg-type]  # mypy#20409: type[Any] is hashable
    )


def record(
    model: type[models.Model],
    using: str,
    upsert_pks: Iterable[Any] = (),
    delete_pks: Iterable[Any] = (),
    lock: bool = False,
    instances: Iterable[models.Model] = (),
) -> None:
    """Capture writes to ``model`` on ``using`` as outbox events.

    ``instances`` were written whole from their attribute values (a plain ``save()`` or
    ``bulk_create()``): their image comes from those values when each is a plain value
    of a built-in field, else from a re-read. ``upsert_pks`` are always re-read, under
    ``lock`` when the rows might not be locked by this transaction yet.
    """
    config = active_config(model, using)
    if config is not None:
        record_active(config, connections[using], model, upsert_pks, delete_pks, lock, instances)


def record_active(
    config: conf.ModelConfig,
    connection: BaseDatabaseWrapper,
    model: type[models.Model],
    upsert_pks: Iterable[Any] = (),
    delete_pks: Iterable[Any] = (),
    lock: bool = False,
    instances: Iterable[models.Model] = (),
) -> None:
    """:func:`record` once the model's config and the connection are known (the write
    is captured: :func:`active_config` returned ``config``)."""
    using = connection.alias
    shape = _shape(model, config.exclude_fields)  # type: ignore[arg-type]  # mypy#20409: type[Any] is hashable
    # Ops as lists, or as their JSON text when an imager wrote it (see outbox.Payload).
    upserts: list[Any] = []
    reread = list(upsert_pks)
    imager = shape.imager
    # The key of ``model``'s own table: a multi-table child's ``pk`` is not set yet
    # when its parent's table has just been written.
    pk_attname = shape.pk_attname
    if imager is None:
        reread += [getattr(obj, pk_attname) for obj in instances]
    else:
        for obj in instances:
            op = imager(obj.__dict__)
            if op is None:
                reread.append(getattr(obj, pk_attname))
            else:
                upserts.append(op)
    if reread:
        for values in read_rows(model._meta.concrete_model, reread, using, lock=lock):
            image = [encode_column(f, values[f.attname]) for f in shape.fields]
            upserts.append(["u", encode_column(shape.pk, values[pk_attname]), image])
    if delete_pks:
        upserts += [["d", encode_column(shape.pk, pk)] for pk in delete_pks]
    if upserts:
        _add(config, connection, shape, upserts)


def record_saved(
    config: conf.ModelConfig,
    connection: BaseDatabaseWrapper,
    model: type[models.Model],
    instance: models.Model,
) -> None:
    """:func:`record_active` of one instance just written whole (a plain ``save()``),
    the path every single save takes: kept short."""
    shape = _shape(model, config.exclude_fields)  # type: ignore[arg-type]  # mypy#20409: type[Any] is hashable
    imager = shape.imager
    op = imager(instance.__dict__) if imager is not None else None
    if op is None:
        record_active(config, connection, model, instances=[instance])
        return
    if config.live or getattr(connection, "_mirror_batch", None) is not None:
        _add(config, connection, shape, [op])
        return
    head = outbox.head(connection.alias, shape.columns, config.generation)
    _write_op(connection, shape.label, head, op)


def _write_op(connection: BaseDatabaseWrapper, label: str, head: str, op: str) -> None:
    """One op (JSON text) stored at once, counted in the transaction: a single save's, or
    a repository call's, of a model not mirrored live."""
    tx = _transaction(connection)
    tx.count(label, 1)
    _dooming(connection.alias, outbox.write_op, connection, label, tx.id, head, op)


def _dooming(using: str, write: Callable[..., None], *args: Any) -> None:
    """``write(*args)``; should it fail, the write's transaction must not commit without
    its events, even if the caller catches the error. What ``mark_for_rollback_on_error``
    does, entered only on failure: on every write it would cost more than the rest."""
    try:
        write(*args)
    except Exception:
        with transaction.mark_for_rollback_on_error(using):
            raise


def _add(
    config: conf.ModelConfig, connection: BaseDatabaseWrapper, shape: _Shape, ops: list[Any]
) -> None:
    """Store ``ops`` (not empty) in the outbox, or add them to the ORM call's batch."""
    tx = _transaction(connection)
    label = shape.label
    counts = tx.counts
    counts[label] = counts.get(label, 0) + len(ops)
    batches = getattr(connection, "_mirror_batch", None)  # inside batch(): one per model
    if batches is not None:
        payload = batches.get(label)
        if payload is not None:
            payload.ops += ops
            return
    payload = outbox.Payload(
        tx=tx.id,
        now=timezone.now(),
        source=connection.alias,
        columns=shape.columns,
        gen=config.generation,
        ops=ops,
    )
    if batches is not None:
        batches[label] = payload
    else:
        _store(connection, label, payload, config.live)


def _store(
    connection: BaseDatabaseWrapper,
    label: str,
    payload: outbox.Payload,
    mirrored_live: bool | None = None,
) -> None:
    """Write the payload to the outbox (see :func:`_dooming`)."""
    _dooming(connection.alias, outbox.write, connection, label, payload, mirrored_live)


@contextmanager
def write_transaction(using: str, model: type[models.Model]) -> Iterator[None]:
    """The transaction a captured write of ``model`` and its events share.

    Outside a transaction, one of ours, which on SQLite takes the write lock first: a
    transaction that reads before it writes (the rows to lock, a delete's cascades)
    would otherwise fail at once with "database is locked" whenever another connection
    writes. Inside the caller's, nothing of ours around Django's own work: Django
    raises and marks what it would.
    """
    if connections[using].in_atomic_block:
        yield
        return
    with transaction.atomic(using=using, savepoint=False):
        write_lock_first(using, model._meta.db_table)
        yield


def record_payload(using: str, label: str, payload: outbox.Payload) -> None:
    """Store an outbox payload made elsewhere (a repository call) in this transaction,
    counted and shipped after commit like captured writes."""
    # Inside the caller's transaction a failure here fails it (marked for rollback, as a
    # nested atomic block without a savepoint would), like a write that cannot be
    # captured; alone, the block is its own transaction.
    connection = connections[using]
    if not connection.in_atomic_block:
        with transaction.atomic(using=using, savepoint=False):
            _store_payload(connection, label, payload)
    else:
        _store_payload(connection, label, payload)


def _store_payload(connection: BaseDatabaseWrapper, label: str, payload: outbox.Payload) -> None:
    config = conf.config_for_label(label)
    live = config is not None and config.live
    if len(payload.ops) == 1 and not live:  # a repository call: the single save's path
        op = payload.ops[0]
        head = outbox.head(payload.source, tuple(payload.columns), payload.gen)
        _write_op(connection, label, head, op if type(op) is str else encode_json(op))
        return
    state = _transaction(connection)
    state.count(label, len(payload.ops))
    payload.tx = state.id
    _store(connection, label, payload, live)


@contextmanager
def batch(using: str) -> Iterator[None]:
    """Collect the events of one ORM call into as few outbox rows as possible."""
    connection = connections[using]
    if getattr(connection, "_mirror_batch", None) is not None:
        yield
        return
    pending: dict[str, outbox.Payload] = {}
    connection._mirror_batch = pending
    try:
        yield
    finally:
        connection._mirror_batch = None
    for label, payload in pending.items():
        _store(connection, label, payload)
