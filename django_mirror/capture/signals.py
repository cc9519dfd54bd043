"""Where capture hears of ORM writes: the ``Model._save_table`` wrapper and the delete
and many-to-many signal receivers, (re)connected for exactly the mirrored models, each
handing its rows to :func:`django_mirror.capture.record.record`. Apart from ``record``,
which turns rows into outbox events whichever path found them.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any

from django.core.signals import setting_changed
from django.db import connections, models, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import signals

from django_mirror.capture.record import (
    CaptureError,
    active_config,
    record,
    record_active,
    record_saved,
)
from django_mirror.config import conf
from django_mirror.core.locking import write_lock_first


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
        if connection.in_atomic_block:
            updated = original(self, *args, **kwargs)
            _record(config, connection, model, self, raw, update_fields)
        else:
            with transaction.atomic(using=using, savepoint=False):
                updated = original(self, *args, **kwargs)
                _record(config, connection, model, self, raw, update_fields)
        return updated

    _save_table._mirror_wrapped = True  # type: ignore[attr-defined]
    return _save_table


def _record(
    config: conf.ModelConfig,
    connection: BaseDatabaseWrapper,
    model: type[models.Model],
    instance: models.Model,
    raw: bool,
    update_fields: Iterable[str] | None,
) -> None:
    """Capture the row ``_save_table`` just wrote."""
    if update_fields is None and not raw:
        record_saved(config, connection, model, instance)
    else:  # a partial save leaves the other columns as the database has them
        pk = getattr(instance, model._meta.pk.attname)
        record_active(config, connection, model, upsert_pks=[pk])


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
