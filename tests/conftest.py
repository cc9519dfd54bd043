"""Shared fixtures: a Kinesis stream on moto, and helpers that run the pipeline and
compare source and target row by row."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import pytest
from django.db import connections, models
from django.test import override_settings
from moto import mock_aws
from moto.core.botocore_stubber import BotocoreStubber

from django_mirror import runtime, testing
from django_mirror.config import conf
from django_mirror.pipeline import relay
from django_mirror.pipeline.replay import Replayer
from django_mirror.streams import KinesisStream, get_stream

BOTH = ["default", "new"]
#: The test settings' one group of models tied by foreign keys (``graph.group_of``).
SHOP = (
    "testapp.AllTypes",
    "testapp.Author",
    "testapp.Book",
    "testapp.Shelf",
    "testapp.ShelfBook",
    "testapp.Tag",
)

#: Two databases, data committed for real: what relay threads and replay see.
both_databases = pytest.mark.django_db(databases=BOTH, transaction=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The WAL capture tests start a PostgreSQL cluster of their own whatever databases a
    pass runs on, so ``make test`` runs them in its SQLite and PostgreSQL passes only:
    ``MIRROR_WAL_TESTS=no`` (the MariaDB and oldest-dependency passes) skips them."""
    if os.environ.get("MIRROR_WAL_TESTS") != "no":
        return
    skip = pytest.mark.skip(
        reason="WAL capture (its own cluster) is tested in the SQLite and PostgreSQL passes"
    )
    for item in items:
        if "cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def phases_from_settings() -> Iterator[None]:
    """Each test starts with the settings' phases: run-time overrides a previous test set
    were flushed with its database, but this process may still hold them."""
    conf.overrides = {}
    yield
    conf.overrides = {}


_moto_calls = threading.Lock()


@contextmanager
def threadsafe_mock_aws() -> Iterator[None]:
    """In-process moto taking one AWS call at a time, as the real services appear to.

    moto's Kinesis iterates a shard's records while another thread's PutRecords may
    grow them ("OrderedDict mutated during iteration"); relay and replay threads in one
    test would otherwise fail on moto's race, not ours.
    """
    unlocked = BotocoreStubber.__call__

    def one_at_a_time(self: BotocoreStubber, *args: Any, **kwargs: Any) -> Any:
        with _moto_calls:
            return unlocked(self, *args, **kwargs)

    with mock.patch.object(BotocoreStubber, "__call__", one_at_a_time), mock_aws():
        yield


@pytest.fixture(autouse=True)
def aws() -> Iterator[None]:
    """In-process moto around every test, fresh each time: the relay thread ships after
    every commit, and nothing may reach the real AWS. Each test creates what it needs.
    What the relay thread was kicked to ship goes to this test's moto, not the next's."""
    with threadsafe_mock_aws():
        yield
        relay.shipper.wait_idle(30)


@pytest.fixture
def kinesis(aws: None) -> Iterator[KinesisStream]:
    """An in-process moto Kinesis with the configured stream created."""
    get_stream.cache_clear()
    stream = get_stream()
    stream.create()
    yield stream  # type: ignore[misc]
    get_stream.cache_clear()


@pytest.fixture
def relay_off() -> Iterator[None]:
    """Nothing ships by itself: the test relays when it means to. (The other tests run
    with the default, the relay thread shipping after every commit.)"""
    from django.conf import settings

    relay_settings = {**settings.DJANGO_MIRROR, "RELAY": {"ON_COMMIT": "off"}}
    with override_settings(DJANGO_MIRROR=relay_settings):
        yield


@pytest.fixture(scope="session", autouse=True)
def background_threads_end_before_the_databases_go(django_db_setup: None) -> Iterator[None]:
    """django-mirror's threads run through the tests as in any process (``apps.py``
    starts them); they end, closing their connections, before the test databases are
    dropped (PostgreSQL refuses to drop a database someone is connected to)."""
    yield
    runtime.stop()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """moto's threaded server on 127.0.0.1, for boto3 over real HTTP (and subprocesses)."""
    with testing.moto_server() as endpoint:
        yield endpoint


def in_thread(target: Callable[[], object], errors: list[BaseException]) -> threading.Thread:
    """A started thread with its own database connections, closed when it ends; what it
    raises lands in ``errors`` for the test to report."""

    def run() -> None:
        try:
            target()
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()  # this thread's connections only

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def drain_and_replay(**replayer_options: Any) -> Any:
    """Relay the whole outbox, then replay until every shard is caught up."""
    relay.drain()
    assert relay.backlog() == 0
    return Replayer(**replayer_options).run(until_caught_up=True)


def rows(model: type[models.Model], alias: str) -> dict[Any, dict[str, Any]]:
    fields = [f.attname for f in model._meta.concrete_fields]
    qs = models.QuerySet(model=model, using=alias).values(*fields)
    return {row[model._meta.pk.attname]: row for row in qs}


def assert_mirrored(*models_: type[models.Model]) -> None:
    """Target equals source for every row of each model, field by field."""
    for model in models_:
        config = conf.model_config(model)
        assert config is not None
        source, target = rows(model, "default"), rows(model, config.target_alias or "")
        missing = source.keys() - target.keys()
        extra = target.keys() - source.keys()
        assert not missing, f"{model.__name__}: missing in target {sorted(map(str, missing))}"
        assert not extra, f"{model.__name__}: extra in target {sorted(map(str, extra))}"
        for pk, row in source.items():
            for name in config.exclude_fields:
                row.pop(name, None)
                target[pk].pop(name, None)
            assert target[pk] == row, f"{model.__name__} {pk}: {target[pk]} != {row}"


class StatsdListener:
    """A UDP socket on 127.0.0.1 that collects statsd lines.

    A thread reads as packets arrive: a burst of metrics would overflow the socket's
    receive buffer if it were read only when the test asks.
    """

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.received: list[str] = []
        self.packets = 0
        self.closed = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while not self.closed.is_set():
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            self.received += data.decode().splitlines()
            self.packets += 1

    def lines(self) -> list[str]:
        """Everything received so far, after a moment for packets still in flight."""
        from django_mirror.observability import reporting

        reporting.flush()  # counters and timers are sent once a second
        # Until nothing more arrives for 0.2 s (at least 1 s when nothing came yet): on a
        # loaded machine the reader thread may not have run yet.
        started, seen = time.monotonic(), -1
        while time.monotonic() - started < 3.0:
            time.sleep(0.2)
            count = len(self.received)
            if count == seen and (count or time.monotonic() - started >= 1.0):
                break
            seen = count
        return list(self.received)

    def close(self) -> None:
        self.closed.set()
        self.reader.join(1)
        self.sock.close()

    def total(self, lines: list[str], name: str, kind: str = "c") -> float:
        """Sum of one counter (or last value of a gauge) across the collected lines."""
        values = [
            float(line.split(":", 1)[1].split("|")[0])
            for line in lines
            if line.split(":", 1)[0] == name and line.endswith(f"|{kind}")
        ]
        return values[-1] if kind == "g" and values else sum(values)


@pytest.fixture
def statsd() -> Iterator[StatsdListener]:
    listener = StatsdListener()
    with override_settings(STATSD_HOST="127.0.0.1", STATSD_PORT=listener.port):
        yield listener
    listener.close()


def mirroring(models_: dict[str, dict[str, Any]] | None = None, **shadow: Any) -> Any:
    """``override_settings`` putting test models in phase ``mirror`` (all of the test
    settings' models unless ``models_`` names some, with their options), with ``SHADOW``
    options for quick re-checks."""
    from django.conf import settings

    base = settings.DJANGO_MIRROR
    chosen = models_ if models_ is not None else {label: {} for label in base["MODELS"]}
    mirrored = {
        label: {**opts, "phase": "mirror", **chosen.get(label, {})} if label in chosen else opts
        for label, opts in base["MODELS"].items()
    }
    return override_settings(
        DJANGO_MIRROR={
            **base,
            "MODELS": mirrored,
            "SHADOW": {**base.get("SHADOW", {}), "RECHECK_DELAY": 0.05, "TIMEOUT": 5.0, **shadow},
        }
    )


@contextmanager
def target_down(alias: str = "new") -> Iterator[None]:
    """New connections to ``alias`` fail, in every thread, as when its server is down:
    a SQLite file in a missing directory, or a closed port."""
    settings_dict = connections.settings[alias]
    saved = {key: settings_dict.get(key) for key in ("NAME", "PORT", "HOST")}
    if settings_dict["ENGINE"].endswith("sqlite3"):
        settings_dict["NAME"] = "/nonexistent/django-mirror/down.sqlite3"
    else:
        settings_dict.update(HOST="127.0.0.1", PORT="1")
    connections[alias].close()
    try:
        yield
    finally:
        connections[alias].close()
        settings_dict.update(saved)


def upsert_event(obj: models.Model, version: int) -> Any:
    """An upsert of ``obj`` as it stands, the way capture encodes it."""
    from django_mirror.core.events import Event, encode_column

    fields = type(obj)._meta.concrete_fields
    row = {f.column: encode_column(f, getattr(obj, f.attname)) for f in fields}
    return Event(model=type(obj)._meta.label, op="upsert", pk=obj.pk, version=version, row=row)


def delete_event(obj: models.Model, version: int) -> Any:
    from django_mirror.core.events import Event

    return Event(model=type(obj)._meta.label, op="delete", pk=obj.pk, version=version)
