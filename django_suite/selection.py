"""Which of Django's test modules a run covers: the ORM's write paths and what sits
on them (transactions, signals, serialization, multiple databases)."""

from __future__ import annotations

MODULES: tuple[str, ...] = (
    "basic",
    "update",
    "bulk_create",
    "delete",
    "delete_regress",
    "many_to_many",
    "m2m_through",
    "model_inheritance",
    "transactions",
    "transaction_hooks",
    "get_or_create",
    "update_only_fields",
    "expressions",
    "custom_pk",
    "one_to_one",
    "model_fields",
    "serializers",
    "queries",
    "multiple_database",
    "fixtures",
    "proxy_models",
    "select_for_update",
    "composite_pk",
)
#: Only on PostgreSQL (the others skip themselves elsewhere).
POSTGRESQL_MODULES: tuple[str, ...] = ("postgres_tests",)


def modules(backend: str) -> list[str]:
    return [*MODULES, *(POSTGRESQL_MODULES if backend == "postgresql" else ())]
