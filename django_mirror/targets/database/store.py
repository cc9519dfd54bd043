"""What every part of ``DatabaseTarget`` stands on: its alias, the alias's connection,
the transaction it writes in, and its models' row specs.

Applying and copying are written as separate halves of the one class; both need these,
so they live beneath both.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from django.db import connections, models, transaction

from django_mirror.core import scoped
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

    def _transaction(self) -> AbstractContextManager[Any]:
        """A transaction on the target; replay's own (not ``live``) check no foreign keys
        in it, and leave the connection's settings as they were once it ends."""
        if self.relaxes_foreign_keys:
            return scoped.foreign_keys_off(self.alias)
        return transaction.atomic(using=self.alias)

    def _spec(self, model: type[models.Model]) -> RowSpec:
        """The model's row spec on this alias, built on first use."""
        spec = self._specs.get(model)
        if spec is None:
            spec = self._specs[model] = RowSpec.of(model, self.connection)
        return spec
