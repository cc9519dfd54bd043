"""How one column of row images becomes driver parameters.

Replay converts every value it applies, so each column is worked out once per model
(its preparer, its default, what the driver may be handed as it is) and then converted a
whole column at a time, in C where it can be: a step per value costs more than the
database's insert of it.
"""

from __future__ import annotations

import datetime as dt
import functools
import operator
import re
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import models

from django_mirror.core import images
from django_mirror.core.events import decode_column, decode_value, quote_value


class Missing:
    """A column an event's row image leaves out."""


MISSING = Missing()


@dataclass(frozen=True)
class Column:
    """How one column of upsert events' row images becomes driver parameters."""

    name: str
    #: From a non-null Python value to the parameter; None: the value goes as it is.
    prepare: Callable[[Any], Any] | None
    #: The field's default, for a column the image leaves out.
    default: Callable[[], Any]
    #: From a non-null image value to the parameter (decoded, then prepared); None: the
    #: value goes as it is unless it is tagged (``{"$dec": ...}``). Made once from
    #: ``prepare``: it runs for every value replay applies.
    load: Callable[[Any], Any] | None
    #: ``load`` of a whole column at once, or None where it cannot do it.
    load_all: Callable[[Sequence[Any]], list[Any] | None] | None = None
    #: What a column whose values go as they are takes: the driver would store anything
    #: (SQLite keeps text in an integer column, and fails past 64 bits).
    accepts: Accepts | None = None

    def prepared(self, value: Any) -> Any:
        """The parameter of a Python value."""
        return value if self.prepare is None or value is None else self.prepare(value)

    def fill(self) -> Any:
        """The parameter where the image leaves the column out."""
        return self.prepared(self.default())

    def convert(self, values: Sequence[Any]) -> Sequence[Any]:
        """The parameters of one column of many rows (``MISSING`` where left out).

        Most columns need nothing done, which one pass over their types in C shows."""
        if self.load_all is not None and (loaded := self.load_all(values)) is not None:
            return loaded
        kinds = set(map(type, values))
        if self.load is not None and Missing not in kinds:
            return [value if value is None else self.load(value) for value in values]
        known: set[type] | None = kinds  # None once the values are converted
        if Missing in kinds:
            values, known = [self._one(value) for value in values], None
        elif dict in kinds or list in kinds:
            values, known = [decode_value(value) for value in values], None
        if self.accepts is not None:
            self.accepts.check(self.name, values, known)
        return values

    def _one(self, value: Any) -> Any:
        if value is MISSING:
            return self.fill()
        if self.load is None:
            return decode_value(value)
        return value if value is None else self.load(value)


@dataclass(frozen=True)
class Accepts:
    """The Python types (None aside) a column takes as they are, and for integers the
    column's range: a value outside them is refused (its event dead-lettered)."""

    kinds: frozenset[type]
    expects: str
    bounds: tuple[int, int] | None = None

    def check(self, column: str, values: Sequence[Any], kinds: set[type] | None) -> None:
        """Refuse the column's values unless all fit: a pass over their types and, for
        integers, a ``min`` and a ``max``, all in C."""
        kinds = set(map(type, values)) if kinds is None else set(kinds)
        nulls = type(None) in kinds
        kinds.discard(type(None))
        if not kinds <= self.kinds:
            bad = next(v for v in values if v is not None and type(v) not in self.kinds)
            raise TypeError(
                f"column {column!r} expects {self.expects}, "
                f"not {type(bad).__name__} {quote_value(bad)}"
            )
        if self.bounds is None or int not in kinds:
            return
        ints = values if kinds == {int} and not nulls else [v for v in values if type(v) is int]
        low, high = self.bounds
        if min(ints) < low or max(ints) > high:
            bad = next(v for v in ints if not low <= v <= high)
            raise ValueError(
                f"{quote_value(bad)} is out of range for column {column!r} ({low} to {high})"
            )


def column(field: models.Field, connection: Any) -> Column:
    """How the field's column of row images becomes parameters on ``connection``."""
    prepare = _preparer(field, connection)
    load_all = None
    if _stores_utc_text(field, connection):
        load_all = _utc_texts
    elif type(field) is models.BooleanField and connection.vendor == "sqlite":
        driver = connection.Database
        if (bool, driver.PrepareProtocol) not in driver.adapters:  # the user set none
            load_all = _bools_as_ints
    return Column(
        field.column,
        prepare,
        field.get_default,
        None if prepare is None else functools.partial(_decoded_prepared, prepare, field),
        load_all,
        _accepts(field, connection),
    )


def _accepts(field: models.Field, connection: Any) -> Accepts | None:
    """What a column whose values pass unchanged takes; None for the others, whose
    values their field prepares (and checks)."""
    if not images.passes_unchanged(field):
        return None
    while isinstance(field, models.ForeignKey):
        field = field.target_field
    if isinstance(field, models.BooleanField):
        return Accepts(frozenset({bool}), "a boolean")
    if isinstance(field, models.FloatField):
        return Accepts(
            frozenset({float, int}), "a number", _int_range(connection, "BigIntegerField")
        )
    if isinstance(field, models.IntegerField):
        return Accepts(
            frozenset({int}), "an integer", _int_range(connection, field.get_internal_type())
        )
    return Accepts(frozenset({str}), "text")


def _int_range(connection: Any, internal_type: str) -> tuple[int, int]:
    """The range of an integer column; 64 bits where the backend does not say."""
    try:
        low, high = connection.ops.integer_field_range(internal_type)
    except (KeyError, TypeError, ValueError):
        low, high = None, None
    return (-(2**63) if low is None else low, 2**63 - 1 if high is None else high)


def _prepare(field: models.Field, connection: Any, value: Any) -> Any:
    return field.get_db_prep_save(value, connection=connection)


def _utc_text(value: dt.datetime) -> Any:
    """What Django's SQLite backend stores for an aware datetime on a UTC connection."""
    return str(value.astimezone(dt.UTC).replace(tzinfo=None))


def _preparer(field: models.Field, connection: Any) -> Any:
    """The driver conversion of one field's decoded values, or None when none is needed.

    Aware datetimes, the common case, skip Django's per-value checks on PostgreSQL
    (the driver adapts them) and on SQLite in UTC (text in Django's own format)."""
    if images.passes_unchanged(field):
        return None
    generic = functools.partial(_prepare, field, connection)
    if _stores_utc_text(field, connection):
        return lambda value: _utc_text(value) if value.tzinfo is not None else generic(value)
    if type(field) is models.DateTimeField and settings.USE_TZ:
        if connection.vendor == "postgresql":
            return lambda value: value if value.tzinfo is not None else generic(value)
    return generic


def _stores_utc_text(field: models.Field, connection: Any) -> bool:
    """Whether the column holds aware datetimes as Django's UTC text (SQLite in UTC)."""
    return (
        type(field) is models.DateTimeField
        and settings.USE_TZ
        and connection.vendor == "sqlite"
        and connection.timezone_name == "UTC"
    )


#: Encoded aware datetimes in UTC, one a line, as ``isoformat`` writes them (no fraction
#: when it is zero). Django's SQLite text differs in a space for the ``T`` and no offset.
_UTC_ISO = (
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T(?:[01][0-9]|2[0-3]):[0-9]{2}:[0-9]{2}"
    r"(?:\.(?!0{6})[0-9]{6})?\+00:00"
)
_UTC_ISO_LINES = re.compile(rf"(?:{_UTC_ISO}\n)*{_UTC_ISO}")


def _utc_texts(values: Sequence[Any]) -> list[Any] | None:
    """Django's SQLite texts of a column of encoded UTC datetimes (and nulls), or None
    when some value is anything else.

    Parsing, converting and formatting each datetime costs more than all the rest of
    its row; cut from the events' own texts, joined, after one match of them all and a
    parse of each to check the dates, all in C, the texts are the same.
    """
    present = [value for value in values if value is not None] if None in values else values
    if set(map(type, present)) != {dict} or set(map(len, present)) != {1}:
        return None
    try:
        texts = list(map(operator.itemgetter("$dt"), present))
    except KeyError:
        return None
    if set(map(type, texts)) != {str}:
        return None
    joined = "\n".join(texts)
    if _UTC_ISO_LINES.fullmatch(joined) is None:
        return None
    try:
        deque(map(dt.datetime.fromisoformat, texts), maxlen=0)
    except ValueError:
        return None  # the value-by-value path says which and why
    cut = joined.replace("T", " ").replace("+00:00", "").split("\n")
    if present is values:
        return cut
    rest = iter(cut)
    return [None if value is None else next(rest) for value in values]


def _decoded_prepared(prepare: Callable[[Any], Any], field: models.Field, raw: Any) -> Any:
    value = decode_column(field, raw)
    return None if value is None else prepare(value)


def _bools_as_ints(values: Sequence[Any]) -> list[Any] | None:
    """A column of booleans (and nulls) as the 1s and 0s SQLite stores for them, or None
    when it holds anything else.

    The driver binds an int as it is, but looks for an adapter for each bool first,
    which costs several times the binding."""
    kinds = set(map(type, values))
    if not kinds <= {bool, type(None)}:
        return None
    return [value if value is None else int(value) for value in values]
