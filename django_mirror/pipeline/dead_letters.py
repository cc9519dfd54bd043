"""Dead letters: the records replay and copy cannot apply, kept whole in their table,
and applied again on request (the admin's retry). Apart from replay's loop because copy
and the admin use them too."""

from __future__ import annotations

from django_mirror.capture.record import paused
from django_mirror.config import conf
from django_mirror.core.events import Event, EventDecodeError
from django_mirror.models import DeadLetter
from django_mirror.observability import reporting
from django_mirror.targets import target_for


def storable(text: str) -> str:
    """``text`` as any database's text column takes it: NUL (PostgreSQL refuses it) and
    lone surrogates (not UTF-8) escaped."""
    if text.isascii() and "\x00" not in text:
        return text
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def dead_letter(
    reason: str, payload: bytes, *, model: str = "", pk_value: str = "", **where: str
) -> None:
    """Keep a record that cannot be applied. Whatever the record holds, the letter can be
    stored: each text is made storable and cut to its column (no field may make the
    insert fail and stop replay); the payload keeps the record whole."""
    fields = {"reason": reason, "model": model, "pk_value": pk_value, **where}
    for name, text in fields.items():
        limit = DeadLetter._meta.get_field(name).max_length
        fields[name] = storable(text)[:limit]
    reporting.incr("dead_letters", 1, fields["model"] or "unknown")
    DeadLetter.objects.using(conf.source_alias()).create(payload=payload, **fields)


def retry_dead_letter(letter: DeadLetter) -> str | None:
    """Apply a dead-lettered event again; None on success, else the reason it failed."""
    try:
        event = Event.from_json(bytes(letter.payload))
    except EventDecodeError as exc:
        return f"undecodable record: {exc}"
    config = conf.config_for_label(event.model)
    if config is None:
        return f"{event.model} is not a mirrored model here"
    with paused():
        result = target_for(config, event.source).apply([event])
    if result.failed:
        return result.failed[0][1]
    return None
