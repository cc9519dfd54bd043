"""The Django admin: mismatch and dead-letter records, the outbox, phase controls and
the migration dashboard.

Django's admin autodiscovery imports this package; each module registers its own."""

from django_mirror.admin import dashboard, dead_letters, mismatches, outbox, phases  # noqa: F401
