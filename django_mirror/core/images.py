"""After-images taken from a just-saved instance instead of re-reading its row.

A whole-row ``save()`` or ``bulk_create()`` writes the instance's attribute values, so
when every value is a plain value of a built-in field the row the database committed
is known without another query. Anything else — an expression, a deferred field, a
custom or database-computed field, a value the database would normalise in a way we
do not reproduce — returns None and the caller re-reads the row.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import uuid
from collections.abc import Callable
from decimal import Decimal
from json.encoder import encode_basestring
from typing import Any

from django.conf import settings
from django.db import models
from django.db.backends.utils import format_number

from django_mirror.core.events import encode_column, encode_json

_NOT_PLAIN = object()


def _int(field: models.Field, value: Any) -> Any:
    return value if type(value) is int else _NOT_PLAIN


def _str(field: models.Field, value: Any) -> Any:
    return value if type(value) is str else _NOT_PLAIN


def _bool(field: models.Field, value: Any) -> Any:
    return value if type(value) is bool else _NOT_PLAIN


def _float(field: models.Field, value: Any) -> Any:
    """Signed zeros and NaN are stored differently by different databases: re-read them."""
    if type(value) is not float or value == 0.0 and math.copysign(1.0, value) < 0:
        return _NOT_PLAIN
    return value if math.isfinite(value) else _NOT_PLAIN


def _decimal(field: models.Field, value: Any) -> Any:
    """Django quantises to the field's places before writing; so do we."""
    if not isinstance(value, Decimal) or not value.is_finite():
        return _NOT_PLAIN
    if len(value.as_tuple().digits) > 15:  # SQLite keeps only 15 significant digits
        return _NOT_PLAIN
    return Decimal(format_number(value, field.max_digits, field.decimal_places))


def _datetime(field: models.Field, value: Any) -> Any:
    if type(value) is not dt.datetime:
        return _NOT_PLAIN
    if settings.USE_TZ:
        return value.astimezone(dt.UTC) if value.tzinfo is not None else _NOT_PLAIN
    return value if value.tzinfo is None else _NOT_PLAIN


def _date(field: models.Field, value: Any) -> Any:
    return value if type(value) is dt.date else _NOT_PLAIN


def _time(field: models.Field, value: Any) -> Any:
    return value if type(value) is dt.time and value.tzinfo is None else _NOT_PLAIN


def _duration(field: models.Field, value: Any) -> Any:
    return value if type(value) is dt.timedelta else _NOT_PLAIN


def _uuid(field: models.Field, value: Any) -> Any:
    return value if type(value) is uuid.UUID else _NOT_PLAIN


def _bytes(field: models.Field, value: Any) -> Any:
    return bytes(value) if isinstance(value, (bytes, bytearray, memoryview)) else _NOT_PLAIN


def _json(field: models.Field, value: Any) -> Any:
    """Exactly what ``json`` makes of it, as a re-read would return.

    Not a float written with an exponent: PostgreSQL's ``jsonb`` keeps numbers as
    ``numeric`` and gives ``1e+16`` back as the integer ``10000000000000000``.
    """
    if field.encoder is not None or field.decoder is not None:
        return _NOT_PLAIN
    try:
        return json.loads(json.dumps(value, allow_nan=False), parse_float=_float_in_full)
    except (TypeError, ValueError):
        return _NOT_PLAIN


def _float_in_full(text: str) -> float:
    if "e" in text or "E" in text:
        raise ValueError(f"{text} has an exponent")
    return float(text)


Normaliser = Callable[[models.Field, Any], Any]

#: Built-in field classes (exactly these, not subclasses) whose written value we know.
_NORMALISERS: dict[type[models.Field], Normaliser] = {
    models.AutoField: _int,
    models.BigAutoField: _int,
    models.SmallAutoField: _int,
    models.IntegerField: _int,
    models.BigIntegerField: _int,
    models.SmallIntegerField: _int,
    models.PositiveIntegerField: _int,
    models.PositiveBigIntegerField: _int,
    models.PositiveSmallIntegerField: _int,
    models.CharField: _str,
    models.TextField: _str,
    models.SlugField: _str,
    models.EmailField: _str,
    models.URLField: _str,
    models.BooleanField: _bool,
    models.FloatField: _float,
    models.DecimalField: _decimal,
    models.DateTimeField: _datetime,
    models.DateField: _date,
    models.TimeField: _time,
    models.DurationField: _duration,
    models.UUIDField: _uuid,
    models.BinaryField: _bytes,
    models.JSONField: _json,
}


#: Methods through which a field subclass could change what is written or read back.
_CONVERSIONS = (
    "from_db_value",
    "to_python",
    "get_prep_value",
    "get_db_prep_value",
    "get_db_prep_save",
    "get_db_converters",
    "get_internal_type",
    "db_type",
)


def _normaliser(field: models.Field) -> Normaliser | None:
    if isinstance(field, models.ForeignKey):
        target = field.target_field
        return _normaliser(target) if not isinstance(target, models.ForeignKey) else None
    return _built_in_normaliser(type(field))  # type: ignore[arg-type]  # mypy#20409: type[Any] is hashable


@functools.cache
def _built_in_normaliser(cls: type[models.Field]) -> Normaliser | None:
    """The normaliser of ``cls``, or of the built-in field it subclasses when it changes
    none of its conversions (``class CreatedField(DateTimeField)`` with a default)."""
    for klass in cls.__mro__:
        if klass in _NORMALISERS:
            return _NORMALISERS[klass]
        if any(name in vars(klass) for name in _CONVERSIONS):
            return None
    return None


def passes_unchanged(field: models.Field) -> bool:
    """Whether a decoded value of this field goes to the database driver as it is."""
    return _normaliser(field) in (_int, _str, _bool, _float)


#: Plain types whose JSON is their own text: only their exact type needs checking.
_SELF_ENCODING = {_int: int, _str: str, _bool: bool}

#: From an instance's ``__dict__`` to its upsert op as outbox JSON text
#: (``["u", pk, [column values]]``), or None to re-read the row.
Imager = Callable[[dict[str, Any]], "str | None"]


@functools.cache
def plan(model: type[models.Model], fields: tuple[models.Field, ...]) -> Imager | None:
    """How to image ``fields`` of ``model`` from an instance; None when some field's
    written value cannot be known without reading it back.

    The imager is generated per model, one straight line of checks per field, as
    ``dataclasses`` generates ``__init__``, and writes the op's JSON itself: it runs for
    every row of every save and ``bulk_create``, where a loop over per-field steps and a
    JSON encoder walking nested lists cost several times as much.
    """
    pk_index = next((i for i, f in enumerate(fields) if f.primary_key), None)
    if pk_index is None:
        return None
    names: dict[str, Any] = {"_NOT_PLAIN": _NOT_PLAIN, "_quote": encode_basestring}
    lines = ["def image(values):", "    try:"]
    lines += [f"        v{i} = values[{f.attname!r}]" for i, f in enumerate(fields)]
    lines += ["    except KeyError:", "        return None  # deferred: not written"]
    for i, f in enumerate(fields):
        normalise = _normaliser(f)
        if normalise is None:
            return None
        lines += [f"    if v{i} is None:"]
        lines += [f'        v{i} = "null"'] if f.null else ["        return None"]
        if normalise in _SELF_ENCODING:
            names[f"t{i}"] = _SELF_ENCODING[normalise]
            lines += [f"    elif type(v{i}) is not t{i}:", "        return None"]
            if normalise is _bool:
                lines += ["    else:", f'        v{i} = "true" if v{i} else "false"']
            elif normalise is _str:
                lines += ["    else:", f"        v{i} = _quote(v{i})"]
            # an int is its own JSON text, as the f-string below formats it
        else:
            if normalise is _datetime and settings.USE_TZ:
                names[f"e{i}"] = _aware_datetime_json
                # The common case inline: an aware datetime already in UTC.
                names["_datetime"], names["_UTC"] = dt.datetime, dt.UTC
                lines += [
                    f"    elif type(v{i}) is _datetime and v{i}.tzinfo is _UTC:",
                    f"        v{i} = '{{\"$dt\":\"' + v{i}.isoformat() + '\"}}'",
                ]
            else:
                names[f"e{i}"] = functools.partial(_json_text, f, normalise)
            lines += [
                "    else:",
                f"        v{i} = e{i}(v{i})",
                f"        if v{i} is _NOT_PLAIN:",
                "            return None",
            ]
    columns = ",".join(f"{{v{i}}}" for i in range(len(fields)))
    lines.append(f"    return f'[\"u\",{{v{pk_index}}},[{columns}]]'")
    exec("\n".join(lines), names)  # noqa: S102 - source built above from field indexes
    return names["image"]


def _aware_datetime_json(value: Any) -> Any:
    """The common case, inlined: an aware datetime, stored and encoded in UTC
    (an ISO timestamp needs no JSON escaping)."""
    if type(value) is not dt.datetime or value.tzinfo is None:
        return _NOT_PLAIN
    if value.tzinfo is not dt.UTC:
        value = value.astimezone(dt.UTC)
    return f'{{"$dt":"{value.isoformat()}"}}'


def _json_text(field: models.Field, normalise: Normaliser, value: Any) -> Any:
    value = normalise(field, value)
    return value if value is _NOT_PLAIN else encode_json(encode_column(field, value))
