"""CacheTarget on Redis (127.0.0.1:6379) and on the local-memory cache: every field type
round-trips, versions order writes, tombstones hide rows, copy only fills gaps, the
capture → relay → replay pipeline lands in the cache, and bad events are refused."""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from io import StringIO
from typing import Any

import pytest
from django.conf import settings
from django.core.cache import caches
from django.core.management import CommandError, call_command
from django.db.models import F
from django.test import override_settings

from django_mirror import paused
from django_mirror.core.events import Event
from django_mirror.models import DeadLetter
from django_mirror.targets import CacheTarget
from tests.conftest import both_databases, drain_and_replay
from tests.conftest import delete_event as delete
from tests.conftest import upsert_event as upsert
from tests.testapp.models import AllTypes, Author, Counter

REDIS_URL = "redis://127.0.0.1:6379/0"
ALIAS = "mirror"


def redis_answers() -> bool:
    """Whether a Redis server answers PING on 127.0.0.1:6379."""
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class Store:
    """One test's cache alias: its backend's name, and a look at a key's expiry."""

    def __init__(self, backend: str, name: str, config: dict[str, Any]) -> None:
        self.backend = backend
        self.name = name
        self.config = config

    def raw(self, key: str) -> Any:
        return caches[ALIAS].get(key)

    def seconds_left(self, key: str) -> float | None:
        """Seconds until ``key`` expires, None when it never does."""
        full = caches[ALIAS].make_key(key)
        if self.backend == "redis":
            import redis

            ttl = redis.Redis.from_url(REDIS_URL).ttl(full)
            assert ttl != -2, f"{full} is not in Redis"
            return None if ttl == -1 else float(ttl)
        from django.core.cache.backends import locmem

        expiry = locmem._expire_info[self.name][full]
        return None if expiry is None else expiry - time.time()

    def clean(self) -> None:
        """Remove this test's keys (a Redis server may be shared: never FLUSHDB)."""
        if self.backend == "redis":
            import redis

            client = redis.Redis.from_url(REDIS_URL)
            keys = list(client.scan_iter(match=f"{self.name}:*"))
            if keys:
                client.delete(*keys)
        else:
            caches[ALIAS].clear()


@pytest.fixture(params=["redis", "locmem"])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    """A ``CACHES`` alias of its own for each test: a fresh key prefix in Redis, a fresh
    local-memory cache."""
    name = f"mirror-test-{uuid.uuid4().hex[:12]}"
    if request.param == "redis":
        pytest.importorskip("redis", reason="the redis package is not installed (dev extra)")
        if not redis_answers():
            pytest.skip("Redis does not answer on 127.0.0.1:6379; the Redis cases need it")
        config = {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": name,
        }
    else:
        config = {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": name,
            "OPTIONS": {"MAX_ENTRIES": 100_000},
        }
    caches_setting = {**settings.CACHES, ALIAS: config}
    with override_settings(CACHES=caches_setting):
        result = Store(request.param, name, config)
        try:
            yield result
        finally:
            result.clean()


@pytest.fixture
def target(store: Store) -> CacheTarget:
    return CacheTarget(cache=ALIAS)


CASES = {
    "everything": AllTypes(
        text="línea 1\nline\t2 — עברית 🐍",
        char="x" * 100,
        big=2**63 - 1,
        small=32767,
        dec=Decimal("-99999999999999.999999"),
        flt=float("inf"),
        flag=True,
        day=dt.date(1, 1, 1),
        moment=dt.datetime(2030, 3, 31, 1, 30, 0, 1, tzinfo=dt.timezone(dt.timedelta(hours=-7))),
        clock=dt.time(0, 0),
        span=dt.timedelta(days=100_000, seconds=1, microseconds=1),
        ref=uuid.UUID("00000000-0000-0000-0000-000000000001"),
        blob=bytes(range(256)),
        doc={"$dec": "1.5", "$b64": ["not", "tags"], "n": [0, -1.25, None, {"ok": False}]},
        ip="192.0.2.1",
        maybe="",
        author_id=42,
    ),
    "nulls": AllTypes(dec=Decimal("0.000000"), flt=-0.0, doc=None, blob=None, maybe=None),
    "json scalars": AllTypes(doc=False, flt=float("-inf"), big=-(2**63), small=-32768),
}


def assert_same_row(row: dict[str, Any], obj: AllTypes) -> None:
    for field in AllTypes._meta.concrete_fields:
        expected = getattr(obj, field.attname)
        assert row[field.attname] == expected, field.name
        assert type(row[field.attname]) is type(expected), field.name


@pytest.mark.parametrize("case", list(CASES))
def test_every_field_type_round_trips(target: CacheTarget, store: Store, case: str):
    obj = CASES[case]
    event = upsert(obj, 7)
    result = target.apply([event])
    assert (result.applied, result.failed) == (1, [])
    assert_same_row(target.fetch(AllTypes, [obj.pk])[str(obj.pk)], obj)
    # The event's tagged image is what the cache holds, untouched.
    assert store.raw(f"mirror:testapp.alltypes:{obj.pk}") == {"v": 7, "d": False, "row": event.row}

    copied = AllTypes(**{f.attname: getattr(obj, f.attname) for f in AllTypes._meta.fields})
    copied.pk = uuid.uuid4()
    values = {f.attname: getattr(copied, f.attname) for f in AllTypes._meta.concrete_fields}
    assert target.copy(AllTypes, [values]).copied == 1
    assert_same_row(target.fetch(AllTypes, [copied.pk])[str(copied.pk)], copied)
    assert store.raw(f"mirror:testapp.alltypes:{copied.pk}") == {
        "v": 0,
        "d": False,
        "row": upsert(copied, 0).row,
    }


def test_versions_order_writes_and_tombstones_hide_rows(target: CacheTarget, store: Store):
    author = Author(pk=1, name="v5")
    assert target.apply([upsert(author, 5)]).applied == 1
    assert target.apply([upsert(Author(pk=1, name="v3"), 3)]).stale == 1  # late, older
    assert target.fetch(Author, [1]) == {"1": {"id": 1, "name": "v5"}}
    both = target.apply([upsert(Author(pk=1, name="v9"), 9), delete(author, 8)])
    assert (both.applied, both.stale) == (1, 1)  # only the newest per row is written
    assert target.fetch(Author, [1])["1"]["name"] == "v9"
    assert target.apply([delete(author, 10)]).applied == 1
    assert target.fetch(Author, [1]) == {}
    assert target.versions("testapp.Author", [1, 2]) == {"1": (10, True)}
    assert target.apply([upsert(Author(pk=1, name="zombie"), 6)]).stale == 1
    assert target.fetch(Author, [1]) == {}
    assert target.apply([upsert(Author(pk=1, name="reborn"), 11)]).applied == 1  # new insert
    assert target.fetch(Author, [1]) == {"1": {"id": 1, "name": "reborn"}}


def test_rows_never_expire_unless_told_and_tombstones_do(target: CacheTarget, store: Store):
    target.apply([upsert(Author(pk=1, name="kept"), 1), delete(Author(pk=2), 2)])
    assert store.seconds_left("mirror:testapp.author:1") is None
    tombstone = store.seconds_left("mirror:testapp.author:2")
    assert tombstone is not None and 8 * 24 * 3600 - 60 < tombstone <= 8 * 24 * 3600

    short = CacheTarget(cache=ALIAS, key_prefix="short", timeout=60, tombstone_ttl=120)
    short.apply([upsert(Author(pk=1, name="brief"), 1), delete(Author(pk=2), 2)])
    short.copy(Author, [{"id": 3, "name": "copied"}])
    assert 50 < (store.seconds_left("short:testapp.author:1") or 0) <= 60
    assert 110 < (store.seconds_left("short:testapp.author:2") or 0) <= 120
    assert 50 < (store.seconds_left("short:testapp.author:3") or 0) <= 60


def test_copy_inserts_only_where_nothing_is_held(target: CacheTarget):
    target.apply([upsert(Author(pk=1, name="replayed"), 4), delete(Author(pk=2), 5)])
    rows = [{"id": pk, "name": f"copied {pk}"} for pk in (1, 2, 3)]
    result = target.copy(Author, rows)
    assert (result.copied, result.skipped) == (1, 2)
    assert {k: r["name"] for k, r in target.fetch(Author, [1, 2, 3]).items()} == {
        "1": "replayed",
        "3": "copied 3",
    }
    assert target.copy(Author, rows).skipped == 3  # copied again: nothing changes
    assert target.versions("testapp.Author", [3]) == {"3": (0, False)}
    assert target.apply([upsert(Author(pk=3, name="captured"), 1)]).applied == 1  # > version 0
    assert target.fetch(Author, [3])["3"]["name"] == "captured"


def test_key_prefixes_keep_targets_apart(store: Store):
    one, two = (
        CacheTarget(cache=ALIAS, key_prefix="one"),
        CacheTarget(cache=ALIAS, key_prefix="two"),
    )
    one.apply([upsert(Author(pk=1, name="in one"), 1)])
    assert two.fetch(Author, [1]) == {} and two.versions("testapp.Author", [1]) == {}
    assert two.copy(Author, [{"id": 1, "name": "in two"}]).copied == 1
    assert one.fetch(Author, [1])["1"]["name"] == "in one"


def test_bad_events_are_refused_with_the_reason(target: CacheTarget):
    good = upsert(Author(pk=1, name="fine"), 1)
    unknown_model = Event(model="testapp.Nope", op="upsert", pk=1, version=1, row={"id": 1})
    no_label = Event(model="nodot", op="delete", pk=1, version=1)
    bad_tag = Event(
        model="testapp.Author", op="upsert", pk=2, version=1, row={"id": 2, "name": {"$x": 1}}
    )
    bad_column = Event(
        model="testapp.Author", op="upsert", pk=3, version=1, row={"id": 3, "nom": "?"}
    )
    no_row = Event(model="testapp.Author", op="upsert", pk=4, version=1, row=None)
    events = [good, unknown_model, no_label, bad_tag, bad_column, no_row]
    for apply in (target.apply, target.apply_live):
        result = apply(events)
        reasons = {e.pk if e.model == "testapp.Author" else e.model: r for e, r in result.failed}
        assert result.applied in (0, 1) and len(result.failed) == 5
        assert "LookupError" in reasons["testapp.Nope"]
        assert "ValueError" in reasons["nodot"]
        assert "unknown value tag '$x'" in reasons[2]
        assert "has no column 'nom'" in reasons[3]
        assert "upsert event has no row" in reasons[4]
    assert set(target.fetch(Author, [1, 2, 3, 4])) == {"1"}


def test_live_apply_follows_versions_and_inserts_with_add(target: CacheTarget):
    assert target.apply_live([upsert(Author(pk=1, name="v2"), 2)]).applied == 1
    assert target.apply_live([upsert(Author(pk=1, name="v1"), 1)]).stale == 1
    assert target.apply_live([delete(Author(pk=1), 3)]).applied == 1
    assert target.apply_live([upsert(Author(pk=1, name="zombie"), 2)]).stale == 1
    assert target.versions("testapp.Author", [1]) == {"1": (3, True)}
    assert target.apply_live([upsert(Author(pk=1, name="v4"), 4)]).applied == 1
    assert target.fetch(Author, [1])["1"]["name"] == "v4"


def test_racing_live_writers_of_new_rows_leave_the_newest(target: CacheTarget):
    """Two writers find the same 300 rows absent at once: ``add`` lets one insert each
    row and the other compares again, so the newer version wins every row."""
    pks = range(1, 301)
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def write(version: int) -> None:
        try:
            start.wait(5)
            target.apply_live([upsert(Author(pk=pk, name=f"v{version}"), version) for pk in pks])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(v,)) for v in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    assert set(target.versions("testapp.Author", list(pks)).values()) == {(2, False)}


def test_a_cache_cannot_be_scanned(target: CacheTarget):
    with pytest.raises(NotImplementedError, match="verify compares its rows by primary key"):
        target.scan(Author)
    assert target.describe() == "cache 'mirror' (keys mirror:…)"
    assert target.setup([Author]) == []


def test_options_are_checked():
    with pytest.raises(ValueError, match="CACHES has no alias 'nowhere'"):
        CacheTarget(cache="nowhere")
    with pytest.raises(ValueError, match="timeout"):
        CacheTarget(timeout=0)
    with pytest.raises(ValueError, match="tombstone_ttl"):
        CacheTarget(tombstone_ttl=0)


def test_an_unreachable_redis_raises_and_reports_itself_unconnected():
    """Redis refusing connections: apply raises (replay retries the batch without
    checkpointing it) and ``connected()`` says so (live mirroring backs off)."""
    redis = pytest.importorskip("redis", reason="the redis package is not installed (dev extra)")
    down = {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": "redis://127.0.0.1:1/0",
    }
    with override_settings(CACHES={**settings.CACHES, "down": down}):
        target = CacheTarget(cache="down")
        with pytest.raises(redis.exceptions.ConnectionError):
            target.apply([upsert(Author(pk=1, name="lost?"), 1)])
        assert target.connected() is False


# --- the pipeline ----------------------------------------------------------------------------


def cache_settings(store: Store, **options: Any) -> override_settings:
    backend = {
        "BACKEND": "django_mirror.targets.CacheTarget",
        "OPTIONS": {"cache": ALIAS, "key_prefix": store.name},
    }
    counter = {**settings.DJANGO_MIRROR["MODELS"]["testapp.Counter"], "target": backend, **options}
    models = {**settings.DJANGO_MIRROR["MODELS"], "testapp.Counter": counter}
    return override_settings(DJANGO_MIRROR={**settings.DJANGO_MIRROR, "MODELS": models})


@both_databases
def test_capture_relay_and_replay_into_the_cache(store: Store, kinesis):
    with cache_settings(store):
        call_command("mirror_setup", verbosity=0)
        with paused():
            Counter.objects.create(name="before capture", value=1)
        counters = [Counter.objects.create(name=f"c{i}", value=i) for i in range(20)]
        Counter.objects.filter(pk__in=[c.pk for c in counters[:5]]).update(value=F("value") + 100)
        Counter.objects.filter(pk=counters[-1].pk).delete()
        drain_and_replay()
        call_command("mirror_copy", "testapp.Counter", verbosity=0)
        target = CacheTarget(cache=ALIAS, key_prefix=store.name)
        source = {c.pk: (c.name, c.value) for c in Counter.objects.all()}
        wanted = [*source, counters[-1].pk]  # the deleted row's tombstone stays hidden
        held = {int(k): (r["name"], r["value"]) for k, r in target.fetch(Counter, wanted).items()}
        assert held == source
        assert target.versions("testapp.Counter", [counters[-1].pk])[str(counters[-1].pk)][1]
        assert not DeadLetter.objects.exists()

        out = StringIO()
        call_command("mirror_verify", "testapp.Counter", "--recheck-delay", "0", stdout=out)
        assert " 0 differ" in out.getvalue()
        caches[ALIAS].delete(f"{store.name}:testapp.counter:{counters[0].pk}")
        out = StringIO()
        with pytest.raises(CommandError):
            call_command(
                "mirror_verify", "testapp.Counter", "--recheck-delay", "0", "--json", stdout=out
            )
        [report] = json.loads(out.getvalue())
        assert [(d["kind"], d["pk"]) for d in report["differences"]] == [
            ("missing", str(counters[0].pk))
        ]


@both_databases
def test_live_mirroring_into_the_cache(store: Store, kinesis):
    from tests.conftest import mirroring

    with cache_settings(store), mirroring({"testapp.Counter": {}}):
        target = CacheTarget(cache=ALIAS, key_prefix=store.name)
        counters = [Counter.objects.create(name=f"c{i}", value=i) for i in range(5)]
        Counter.objects.filter(pk=counters[1].pk).update(value=F("value") + 10)
        counters[2].delete()
        held = {
            int(k): r["value"] for k, r in target.fetch(Counter, [c.pk for c in counters]).items()
        }
        assert held == {counters[0].pk: 0, counters[1].pk: 11, counters[3].pk: 3, counters[4].pk: 4}
        drain_and_replay()  # replay finds every event already applied
        assert target.fetch(Counter, [c.pk for c in counters]).keys() == {str(k) for k in held}
        assert not DeadLetter.objects.exists()
