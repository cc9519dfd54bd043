"""Turn ORM writes to mirrored models into events in the source database's outbox.

Every write path ends in :func:`record`, which re-reads the rows the write touched
(inside the same transaction, under the write's row locks) and stores their
after-images as one ``OutboxBatch`` row. Because the outbox row commits or rolls
back with the write, the stream gets an event for every committed write and for
no rolled-back one; after commit a relay ships the batch.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import itertools
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

from django.core.signals import setting_changed
from django.db import connections, models, router, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import signals
from django.utils import timezone

from django_mirror.capture import outbox
from django_mirror.config import conf
from django_mirror.core import images
from django_mirror.core.batching import chunks, keys_per_statement, unique
from django_mirror.core.events import (
    encode_column,
)
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
    if (using or router.db_for_write(model)) != capture_alias(config):
        return None
    return config


class _Transaction:
    """What capture keeps per source transaction: its id and what it captured, reported
    (and shipped) only once it commits."""

    __slots__ = ("id", "counts", "after_commit")

    def __init__(self, using: str) -> None:
        self.id = next(_transaction_ids)
        self.counts: dict[str, int] = {}
        self.after_commit = functools.partial(_after_commit, using, self.counts)

    def count(self, label: str, events: int) -> None:
        self.counts[label] = self.counts.get(label, 0) + events


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
    state = getattr(connection, "_mirror_tx", None)
    if state is not None and any(
        entry[1] is state.after_commit for entry in connection.run_on_commit
    ):
        return state
    state = _Transaction(connection.alias)
    # Robust: should ours fail after all, Django still runs the app's later callbacks.
    connection.on_commit(state.after_commit, robust=True)
    connection._mirror_tx = state
    return state


def uncommitted_events(using: str) -> bool:
    """The open transaction on ``using`` has captured writes not yet committed."""
    connection = connections[using]
    state = getattr(connection, "_mirror_tx", None)
    return (
        state is not None
        and connection.in_atomic_block
        and any(entry[1] is state.after_commit for entry in connection.run_on_commit)
    )


#: Called with the alias after every transaction that captured events commits: capture
#: announces, the relay listens (``apps.py`` subscribes it), so capture never calls up.
committed_hooks: list[Callable[[str], None]] = []


def _after_commit(using: str, counts: dict[str, int]) -> None:
    with reporting.guarded("after-commit bookkeeping failed; the outbox keeps the events"):
        for label, count in counts.items():
            reporting.incr("captured", count, label)
        for hook in committed_hooks:
            hook(using)


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
        _record(config, connections[using], model, upsert_pks, delete_pks, lock, instances)


def _record(
    config: conf.ModelConfig,
    connection: BaseDatabaseWrapper,
    model: type[models.Model],
    upsert_pks: Iterable[Any] = (),
    delete_pks: Iterable[Any] = (),
    lock: bool = False,
    instances: Iterable[models.Model] = (),
) -> None:
    """:func:`record` once the model's config and the connection are known."""
    using = connection.alias
    shape = _shape(model, config.exclude_fields)  # type: ignore[arg-type]  # mypy#20409: type[Any] is hashable
    # Ops as lists, or as their JSON text when an imager wrote it (see outbox.Payload).
    upserts: list[Any] = []
    reread = list(upsert_pks)
    imager = shape.imager
    # The key of ``model``'s own table: a multi-table child's ``pk`` is not set yet
    # when its parent's table has just been written.
    pk_attname = shape.pk_attname
    for obj in instances:
        op = imager(obj.__dict__) if imager is not None else None
        if op is None:
            reread.append(getattr(obj, pk_attname))
        else:
            upserts.append(op)
    if reread:
        for values in read_rows(model._meta.concrete_model, reread, using, lock=lock):
            image = [encode_column(f, values[f.attname]) for f in shape.fields]
            upserts.append(["u", encode_column(shape.pk, values[pk_attname]), image])
    deletes = [["d", encode_column(shape.pk, pk)] for pk in delete_pks]
    if not upserts and not deletes:
        return
    tx = _transaction(connection)
    batches = getattr(connection, "_mirror_batch", None)  # inside batch(): one per model
    payload = batches.get(shape.label) if batches is not None else None
    if payload is None:
        payload = outbox.Payload(
            tx=tx.id,
            now=timezone.now(),
            source=connection.alias,
            columns=shape.columns,
            gen=config.generation,
        )
        if batches is not None:
            batches[shape.label] = payload
    payload.ops += upserts
    payload.ops += deletes
    tx.count(shape.label, len(upserts) + len(deletes))
    if batches is None:
        _store(connection, shape.label, payload, config.live)


def _store(
    connection: BaseDatabaseWrapper,
    label: str,
    payload: outbox.Payload,
    mirrored_live: bool | None = None,
) -> None:
    """Write the payload to the outbox; should that fail, the write's transaction must
    not commit without it, even if the caller catches the error."""
    with transaction.mark_for_rollback_on_error(connection.alias):
        outbox.write(connection, label, payload, mirrored_live)


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
    with (
        transaction.mark_for_rollback_on_error(using)
        if connection.in_atomic_block
        else transaction.atomic(using=using, savepoint=False)
    ):
        state = _transaction(connection)
        payload.tx = state.id
        state.count(label, len(payload.ops))
        outbox.write(connection, label, payload)


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


# --- signal receivers -------------------------------------------------------------------


def _on_post_delete(
    sender: type[models.Model], instance: models.Model, using: str, **kw: Any
) -> None:
    record(sender, using, delete_pks=[instance.pk])


def _m2m_field(through: type[models.Model]) -> models.ManyToManyField:
    for f in through._meta.auto_created._meta.local_many_to_many:
        if f.remote_field.through is through:
            return f
    raise LookupError(f"no many-to-many field uses {through._meta.label}")


def _m2m_rows(
    sender: type[models.Model],
    instance: models.Model,
    reverse: bool,
    pk_set: Iterable[Any] | None,
    using: str,
) -> list[Any]:
    """Primary keys of the through rows an add/remove/clear on ``instance`` touches."""
    m2m = _m2m_field(sender)
    near, far = m2m.m2m_field_name(), m2m.m2m_reverse_field_name()
    if reverse:
        near, far = far, near
    qs = models.QuerySet(model=sender, using=using).filter(**{near: instance.pk})
    if pk_set is not None:
        qs = qs.filter(**{f"{far}__in": list(pk_set)})
    if connections[using].features.has_select_for_update:
        qs = qs.select_for_update()
    return list(qs.values_list("pk", flat=True))


def _on_m2m_changed(
    sender: type[models.Model],
    instance: models.Model,
    action: str,
    reverse: bool,
    pk_set: set[Any] | None,
    using: str,
    **kw: Any,
) -> None:
    if active_config(sender, using) is None or connections[using].needs_rollback:
        # A transaction already doomed (an earlier error in the caller's atomic block)
        # commits nothing: query nothing, so Django raises what it raises without us.
        return
    if action in ("pre_add", "pre_remove", "pre_clear"):
        # SQLite: Django reads the rows present before it writes, and so do we.
        write_lock_first(using, sender._meta.db_table)
    if action in ("pre_remove", "pre_clear"):
        pending = instance.__dict__.setdefault("_mirror_m2m_pending", {})
        pending[sender] = _m2m_rows(sender, instance, reverse, pk_set, using)
    elif action in ("post_remove", "post_clear"):
        pks = instance.__dict__.get("_mirror_m2m_pending", {}).pop(sender, [])
        record(sender, using, delete_pks=pks)
    elif action == "post_add" and pk_set:
        record(sender, using, upsert_pks=_m2m_rows(sender, instance, reverse, pk_set, using))


#: ``on_delete`` handlers that never rewrite a child row with a signal-less ``UPDATE``.
_NO_REWRITE = (models.CASCADE, models.PROTECT, models.RESTRICT, models.DO_NOTHING)


def _rewriting_relations(parent: type[models.Model]) -> list[models.ForeignKey]:
    """Foreign keys of mirrored models that Django rewrites (SET_NULL etc.) when ``parent`` goes,
    and those of auto-created M2M tables, whose rows it fast-deletes without a signal."""
    return [
        rel.field
        for rel in parent._meta.get_fields(include_hidden=True)
        if isinstance(rel, models.ForeignObjectRel)
        and not rel.many_to_many
        and (rel.on_delete not in _NO_REWRITE or rel.related_model._meta.auto_created)
        and conf.model_config(rel.related_model) is not None
    ]


def _on_parent_pre_delete(
    sender: type[models.Model], instance: models.Model, using: str, **kw: Any
) -> None:
    """Note which mirrored children a SET_NULL/SET_DEFAULT/SET() cascade will rewrite.

    Django rewrites them with a plain ``UPDATE`` that sends no signal. Locking the
    parent first keeps a concurrent writer from pointing a new child at it meanwhile.
    """
    fields = [f for f in _rewriting_relations(sender) if active_config(f.model, using)]
    if not fields:
        return
    write_lock_first(using, sender._meta.db_table)  # SQLite: these reads come first
    if connections[using].features.has_select_for_update:
        list(models.QuerySet(model=sender, using=using).filter(pk=instance.pk).select_for_update())
    pending = {}
    for f in fields:
        children = models.QuerySet(model=f.model, using=using).filter(**{f.name: instance.pk})
        pending[f] = list(children.values_list("pk", flat=True))
    instance.__dict__["_mirror_set_null_pending"] = pending


def _on_parent_post_delete(
    sender: type[models.Model], instance: models.Model, using: str, **kw: Any
) -> None:
    for f, pks in instance.__dict__.pop("_mirror_set_null_pending", {}).items():
        if f.model._meta.auto_created:  # M2M rows cascade-deleted with the parent
            record(f.model, using, delete_pks=pks)
        else:
            record(f.model, using, upsert_pks=pks)


#: (signal, sender, dispatch_uid) of every receiver connected, so a settings change
#: can take exactly those back.
_connected: list[tuple[signals.ModelSignal, type[models.Model], str]] = []


def _connect(signal: signals.ModelSignal, receiver: Any, sender: type[models.Model]) -> None:
    uid = f"django_mirror.capture.{receiver.__name__}.{sender._meta.label_lower}"
    signal.connect(receiver, sender=sender, dispatch_uid=uid)
    _connected.append((signal, sender, uid))


def _captured_save_table(original: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``Model._save_table`` so a saved row is captured as soon as it is written,
    in one transaction with it.

    Not from ``post_save``: a receiver that runs before ours and writes the same row
    (connected at import time, it does) would be captured first, and the save's older
    image would then replay over it. Django writes a single-table model in autocommit
    mode without a transaction, which would let a crash fall between the row's commit
    and its event's: here they share one. Each table of a multi-table model is its own
    ``_save_table`` call, so a mirrored parent is captured when a child is saved.

    The call passes through as it came, and the four arguments capture needs are found
    by the original's signature: a parameter a new Django adds changes nothing here.
    """
    signature = inspect.signature(original)
    missing = {"raw", "cls", "using", "update_fields"} - set(signature.parameters)
    if missing:
        raise CaptureError(
            f"{original.__qualname__} has no parameter {', '.join(sorted(missing))}: this "
            "Django version saves rows in a way django-mirror cannot capture."
        )

    # Where each is found: its position after ``self`` (Django passes them positionally)
    # else its keyword, else its default; cheaper than binding the signature per save.
    names = list(signature.parameters)[1:]
    found = [
        (names.index(name), name, signature.parameters[name].default)
        for name in ("raw", "cls", "using", "update_fields")
    ]

    @functools.wraps(original)
    def _save_table(self: models.Model, *args: Any, **kwargs: Any) -> Any:
        given = len(args)
        raw, cls, using, update_fields = [
            args[index] if index < given else kwargs.get(name, default)
            for index, name, default in found
        ]
        model = type(self)
        if cls is not None and cls is not model._meta.concrete_model:
            model = cls  # a parent's table of a multi-table model
        config = active_config(model, using)
        if config is None:
            return original(self, *args, **kwargs)
        connection = connections[using]
        with (
            nullcontext()
            if connection.in_atomic_block
            else transaction.atomic(using=using, savepoint=False)
        ):
            updated = original(self, *args, **kwargs)
            if update_fields is None and not raw:
                _record(config, connection, model, instances=[self])
            else:  # a partial save leaves the other columns as the database has them
                pk = getattr(self, model._meta.pk.attname)
                _record(config, connection, model, upsert_pks=[pk])
        return updated

    _save_table._mirror_wrapped = True  # type: ignore[attr-defined]
    return _save_table


def connect_signals() -> None:
    """(Re)connect receivers for exactly the mirrored models, so others pay nothing."""
    while _connected:
        signal, sender, uid = _connected.pop()
        signal.disconnect(sender=sender, dispatch_uid=uid)
    parents: set[type[models.Model]] = set()
    for model in conf.mirrored_models():
        if model._meta.auto_created:
            _connect(signals.m2m_changed, _on_m2m_changed, model)
            # Deleting either end fast-deletes its rows here without a signal.
            parents.update(f.related_model for f in model._meta.concrete_fields if f.many_to_one)
            continue
        _connect(signals.post_delete, _on_post_delete, model)
        if not getattr(model._save_table, "_mirror_wrapped", False):
            model._save_table = _captured_save_table(model._save_table)
        parents.update(
            f.related_model
            for f in model._meta.concrete_fields
            if f.many_to_one and f.remote_field.on_delete not in _NO_REWRITE
        )
    for parent in parents:
        _connect(signals.pre_delete, _on_parent_pre_delete, parent)
        _connect(signals.post_delete, _on_parent_post_delete, parent)


def _on_setting_changed(*, setting: str, **kwargs: object) -> None:
    if setting in conf.RECONFIGURING:
        connect_signals()


setting_changed.connect(_on_setting_changed, dispatch_uid="django_mirror.capture")
