"""What every part of ``DatabaseTarget`` stands on: its alias, the alias's connection,
the transaction it writes in, and its models' row specs.

Applying and copying are written as separate halves of the one class; both need these,
so they live beneath both.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.db import connections, models, transaction

from django_mirror.config import conf
from django_mirror.core import applied, scoped
from django_mirror.targets.base import Target
from django_mirror.targets.database.rows import RowSpec


class DatabaseStore(Target):
    """A ``DATABASES`` alias written through the database driver."""

    def __init__(self, alias: str, relax_foreign_keys: bool = True) -> None:
        self.alias = alias
        self.relaxes_foreign_keys = relax_foreign_keys
        self._specs: dict[type[models.Model], RowSpec] = {}

    def describe(self) -> str:
        return f"database {self.alias!r}"

    @property
    def connection(self) -> Any:
        return connections[self.alias]

    def connected(self) -> bool:
        return self.connection.connection is not None

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """A transaction on the target; replay's own (not ``live``) check no foreign keys
        in it, and leave the connection's settings as they were once it ends. Where
        ``mirror_capture`` reads the log, it is marked as django-mirror's own."""
        with (
            scoped.foreign_keys_off(self.alias)
            if self.relaxes_foreign_keys
            else transaction.atomic(using=self.alias)
        ):
            if self.alias in conf.log_captured_aliases():
                applied.mark(self.connection)
            yield

    def _spec(self, model: type[models.Model]) -> RowSpec:
        """The model's row spec on this alias, built on first use."""
        spec = self._specs.get(model)
        if spec is None:
            spec = self._specs[model] = RowSpec.of(model, self.connection)
        return spec
