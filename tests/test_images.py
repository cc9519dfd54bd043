"""Row images taken from a saved instance (``images.plan``) are exactly what a re-read
of the committed row gives: the same JSON, value for value, on every database."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from django_mirror.core import images
from django_mirror.core.events import encode_column, encode_value
from tests.conftest import rows
from tests.testapp.models import AllTypes, Author

#: Every AllTypes field but the IP address, whose written form is not known up front.
FIELDS = tuple(f for f in AllTypes._meta.concrete_fields if f.name != "ip")

offsets = st.builds(
    dt.timezone, st.integers(-14 * 60, 14 * 60).map(lambda m: dt.timedelta(minutes=m))
)
#: What a database column can hold: no lone surrogates (not UTF-8), no NUL (not in
#: PostgreSQL text).
stored_characters = st.characters(codec="utf-8", exclude_characters="\x00")
text = st.text(stored_characters)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: "e" not in repr(f))
    | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)
plain_rows = st.fixed_dictionaries(
    {
        "text": text,
        "char": st.text(stored_characters, max_size=100),
        "big": st.integers(-(2**63), 2**63 - 1),
        "small": st.integers(-32768, 32767),
        "dec": st.decimals(-(10**8), 10**8, places=6),
        "flt": st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: f != 0.0)
        | st.just(0.0),
        "flag": st.booleans(),
        "day": st.none() | st.dates(dt.date(1000, 1, 1)),
        "moment": st.none()
        | st.datetimes(dt.datetime(1900, 1, 1), dt.datetime(2100, 1, 1), timezones=offsets),
        "clock": st.none() | st.times(),
        "span": st.none() | st.timedeltas(-dt.timedelta(days=10**4), dt.timedelta(days=10**4)),
        "ref": st.none() | st.uuids(version=4),  # MariaDB refuses some other variants
        "blob": st.none() | st.binary(),
        "doc": json_values,
        "maybe": st.none() | st.text(stored_characters, max_size=20),
        "with_author": st.booleans(),
    }
)


@pytest.mark.django_db
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(values=plain_rows)
def test_an_instance_image_is_the_committed_row(values: dict[str, Any]) -> None:
    with_author = values.pop("with_author")
    obj = AllTypes(**values, author=Author.objects.create(name="A") if with_author else None)
    obj.save()
    imager = images.plan(AllTypes, FIELDS)
    assert imager is not None
    op = imager(obj.__dict__)
    assert op is not None, f"plain values were not imaged: {values!r}"
    committed = rows(AllTypes, "default")[obj.pk]
    expected = ["u", encode_value(obj.pk), [encode_column(f, committed[f.attname]) for f in FIELDS]]
    assert json.loads(op) == expected


@pytest.mark.parametrize(
    "values",
    [
        {"flt": -0.0},
        {"flt": float("nan")},
        {"dec": Decimal("12345678.12345678")},  # more digits than SQLite keeps
        {"moment": dt.datetime(2024, 1, 1)},  # naive under USE_TZ
        {"doc": {"big": 1e16}},  # jsonb gives it back as an integer
        {"doc": [float("inf")]},
    ],
    ids=repr,
)
def test_values_a_database_may_store_otherwise_are_re_read(values: dict[str, Any]) -> None:
    obj = AllTypes(**values)
    imager = images.plan(AllTypes, FIELDS)
    assert imager is not None
    assert imager(obj.__dict__) is None


def test_a_deferred_field_is_re_read() -> None:
    obj = AllTypes()
    del obj.__dict__["text"]
    assert images.plan(AllTypes, FIELDS)(obj.__dict__) is None  # type: ignore[misc]
