"""Repository-level mirroring: record, replay and mirror the calls of a service's own
data interfaces, for targets that remodel the data (see ``docs/repositories.md``)."""

from django_mirror.repositories.calls import current_event_id
from django_mirror.repositories.interface import InterfaceError, passthrough, read, write
from django_mirror.repositories.registry import get
from django_mirror.repositories.wrapper import repository

__all__ = [
    "InterfaceError",
    "current_event_id",
    "get",
    "passthrough",
    "read",
    "repository",
    "write",
]
