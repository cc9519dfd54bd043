"""Repository-level mirroring: wrappers generated from an interface's signatures record
write calls, replay them on targets in order, mirror them live and shadow reads."""

from __future__ import annotations

import inspect
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from io import StringIO
from typing import Any, Protocol

import pytest
from django.conf import settings
from django.core.management import call_command
from django.test import override_settings

from django_mirror.models import MismatchRecord, OutboxBatch
from django_mirror.pipeline import relay
from django_mirror.pipeline.replay import Replayer
from django_mirror.repositories import InterfaceError, get, read, repository, write
from django_mirror.repositories.interface import binder
from django_mirror.repositories.registry import config_for
from django_mirror.shadow import get_pool, shadow_reads
from tests.conftest import both_databases, drain_and_replay, in_thread
from tests.testapp.models import Unmirrored
from tests.testapp.repositories import INTERFACE, AlreadyFollowing, FollowStore

#: These tests read, and some rewrite, the recorded calls in the outbox before shipping.
pytestmark = pytest.mark.usefixtures("relay_off")


def repositories(phase: str = "capture", **targets: str) -> override_settings:
    targets = targets or {"main": "tests.testapp.repositories.TargetFollows"}
    mirror = {
        **settings.DJANGO_MIRROR,
        "REPOSITORIES": {
            INTERFACE: {
                "source": "tests.testapp.repositories.SourceFollows",
                "targets": targets,
                "phase": phase,
                "shadow_read_rate": 1.0,
            }
        },
        "SHADOW": {"RECHECK_DELAY": 0.05},
    }
    return override_settings(DJANGO_MIRROR=mirror)


def impl(name: str = "") -> Any:
    config = config_for(INTERFACE)
    assert config is not None
    return config.source() if not name else config.targets()[name]


@pytest.fixture
def repo() -> Iterator[Any]:
    with repositories():
        yield get(FollowStore)


def recorded() -> list[dict[str, Any]]:
    return [e for batch in OutboxBatch.objects.order_by("id") for e in batch.events()]


@both_databases
def test_every_kind_of_parameter_is_recorded_and_replayed_as_called(kinesis, repo):
    assert repo.follow(1, 10) == 1
    assert repo.follow(user=2, channel=10, notify=False) == 2
    assert repo.follow_many(11, 3, 4, 5) == 3  # *args
    assert repo.unfollow(1, channel=10) is True
    events = recorded()
    assert [e["row"]["method"] for e in events] == ["follow", "follow", "follow_many", "unfollow"]
    assert [e["pk"] for e in events] == ["10", "10", "11", "10"]  # the partition key
    assert events[1]["row"]["kwargs"] == {"notify": False}
    assert events[1]["row"]["outcome"] == {"return": 2}
    drain_and_replay()
    source, target = impl(), impl("main")
    assert (
        dict(target.follows)
        == dict(source.follows)
        == {10: {2: False}, 11: {3: True, 4: True, 5: True}}
    )
    assert [entry[2] for entry in target.log] == [e["id"] for e in events]  # event ids passed on
    assert not MismatchRecord.objects.exists()


@both_databases
def test_passthrough_methods_are_untouched(repo):
    assert repo.backend() == "SourceFollows"
    assert not OutboxBatch.objects.exists()
    assert repo.followers(10) == []  # a read in capture: source only, nothing recorded
    assert not OutboxBatch.objects.exists()


@both_databases
def test_a_tolerated_error_is_recorded_and_mirrored_an_intolerable_one_only_raised(kinesis, repo):
    repo.follow(1, 10)
    with pytest.raises(AlreadyFollowing):
        repo.follow(1, 10)  # the backend's answer: recorded as such
    with pytest.raises(TypeError):
        repo.follow(1)  # not a call the interface allows: raised before anything
    with pytest.raises(KeyError):
        impl().follows = None  # type: ignore[assignment]
        impl().__dict__["follows"] = _Exploding()
        repo.follow(2, 10)  # the source failed: the caller sees it, nothing recorded
    outcomes = [e["row"]["outcome"] for e in recorded()]
    assert outcomes == [
        {"return": 1},
        {"error": {"type": "AlreadyFollowing", "message": "1 follows 10"}},
    ]
    drain_and_replay()
    assert impl("main").follows == {10: {1: True}}
    assert not MismatchRecord.objects.exists()  # the target raised the same error


class _Exploding(dict):  # type: ignore[type-arg]
    def __missing__(self, key: Any) -> Any:
        raise KeyError(key)


@both_databases
def test_replay_from_the_start_rebuilds_a_target(kinesis, repo):
    for user in range(5):
        repo.follow(user, 20)
    repo.unfollow(3, 20)
    drain_and_replay()
    assert impl("main").follows == impl().follows
    impl("main").follows.clear()  # the target is lost and rebuilt empty
    call_command("mirror_replay", "--from-start", "--until-caught-up", stdout=StringIO())
    assert impl("main").follows == impl().follows == {20: {0: True, 1: True, 2: True, 4: True}}


@both_databases
def test_two_targets_mirrored_live_one_diverging(statsd):
    with repositories(
        "mirror",
        good="tests.testapp.repositories.TargetFollows",
        candidate="tests.testapp.repositories.DivergingFollows",
    ):
        repo = get(FollowStore)
        assert repo.follow(1, 30, notify=False) == 1  # the source's answer, always
        assert repo.follow(2, 30) == 2
        assert impl("good").follows == impl().follows  # live, before any replay
        assert impl("candidate").follows[30] == {1: True, 2: True}
        records = MismatchRecord.objects.filter(kind="write")
        assert records.count() == 2
        assert {r.query for r in records} == {"follow on candidate"}
        assert records[0].source_value["return"] != records[0].target_value["return"]
        with shadow_reads():
            assert repo.followers(30) == [2, 1]
        assert get_pool().wait_idle(30)
    lines = statsd.lines()
    assert (
        statsd.total(lines, "django_mirror.write.mismatch.tests_testapp_repositories_followstore")
        == 2
    )
    assert (
        statsd.total(lines, "django_mirror.read.compared.tests_testapp_repositories_followstore")
        == 2
    )
    assert (
        statsd.total(lines, "django_mirror.read.match.tests_testapp_repositories_followstore") == 2
    )


@both_databases
def test_calls_replay_in_order_per_partition_key_under_concurrent_writers(kinesis):
    with repositories():
        repo = get(FollowStore)
        errors: list[BaseException] = []

        def writer(seed: int) -> None:
            rng = random.Random(seed)
            for _ in range(60):
                user, channel = rng.randrange(8), rng.randrange(4)
                try:
                    if rng.random() < 0.6:
                        repo.follow(user, channel)
                    else:
                        repo.unfollow(user, channel)
                except AlreadyFollowing:
                    pass

        threads = [in_thread(lambda s=s: writer(s), errors) for s in range(4)]
        for thread in threads:
            thread.join(60)
        assert not errors, errors
        relay.drain()
        Replayer().run(until_caught_up=True)
        source, target = impl(), impl("main")
        assert target.follows == source.follows
        for channel in range(4):  # each channel's calls in the order the source took them
            assert [m for m, c, _ in target.log if c == channel] == [
                m for m, c, _ in source.log if c == channel
            ]
        assert not MismatchRecord.objects.exists()


def test_interfaces_are_checked_when_defined():
    with pytest.raises(InterfaceError, match="needs a type annotation"):

        @repository
        class NoAnnotation(Protocol):
            @write
            def put(self, key) -> None: ...  # type: ignore[no-untyped-def]

    with pytest.raises(InterfaceError, match="cannot be recorded"):

        @repository
        class Unserialisable(Protocol):
            @write
            def put(self, key: threading.Lock) -> None: ...

    with pytest.raises(InterfaceError, match="mark it @write, @read or @passthrough"):

        @repository
        class Unmarked(Protocol):
            def put(self, key: int) -> None: ...

    with pytest.raises(InterfaceError, match="partition_key 'channel' is not an argument"):

        @repository
        class BadKey(Protocol):
            @write(partition_key="channel")
            def put(self, key: int) -> None: ...

    @repository
    class Fine(Protocol):
        @read
        def get(
            self, keys: list[int], *, scale: dict[str, float] | None = None
        ) -> dict[str, int]: ...

    assert hasattr(Fine, "Mirrored")


@both_databases
def test_the_dashboard_shows_a_mirrored_repository_and_its_mismatches(admin_client):
    from django_mirror.observability import stats

    with repositories("mirror", candidate="tests.testapp.repositories.DivergingFollows"):
        get(FollowStore).follow(1, 40)
        stats.flush()
        page = admin_client.get("/admin/django_mirror/metricwindow/").content.decode()
    assert INTERFACE in page and "candidate" in page
    assert MismatchRecord.objects.filter(model=INTERFACE, kind="write").count() == 1


@both_databases
def test_a_repository_obtained_while_off_records_once_the_phase_changes():
    with repositories("off"):
        repo = get(FollowStore)
        repo.follow(1, 50)
        repo.follow(2, 50)  # the wrapper steps aside while off
        assert not OutboxBatch.objects.exists()
        with repositories("capture"):
            repo.follow(3, 50)
            assert [e["row"]["method"] for e in recorded()] == ["follow"]
        repo.follow(4, 50)
        assert len(recorded()) == 1


def test_a_wrapper_off_calls_the_source_methods_set_on_it():
    """The bypass is the source's bound method on the instance, and no class of the
    wrapper has an attribute of that name: one would make every bypassed call take
    CPython's unspecialised attribute lookup (1.45x the source's call on a no-op)."""
    names = {"follow", "unfollow", "follow_many", "followers", "backend"}
    with repositories("off"):
        repo = get(FollowStore)
        assert repo.followers(10) == []
        source = impl()
        assert all(getattr(repo, name) == getattr(source, name) for name in names)
        assert not any(names & vars(cls).keys() for cls in type(repo).__mro__)
    # DJANGO_MIRROR changed: the wrapper's own methods again, as the class describes them
    mirrored = FollowStore.Mirrored  # type: ignore[attr-defined]
    assert type(repo) is mirrored and repo.follow != source.follow
    assert repo.follow.__func__ is mirrored.follow
    assert inspect.signature(mirrored.follow) == inspect.signature(FollowStore.follow)
    assert names <= set(dir(repo)) and names <= set(dir(mirrored))
    with pytest.raises(AttributeError, match="has no attribute 'missing'"):
        repo.missing  # noqa: B018


@contextmanager
def outbox_gone() -> Iterator[None]:
    """The outbox table renamed away, so recording anything fails."""
    from django.db import connection

    table = connection.ops.quote_name(OutboxBatch._meta.db_table)
    away = connection.ops.quote_name("outbox_away")
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {table} RENAME TO {away}")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {away} RENAME TO {table}")


@both_databases
def test_a_call_that_cannot_be_recorded_fails_with_its_transaction(repo):
    from django.db import DatabaseError, transaction

    with outbox_gone(), pytest.raises(DatabaseError), transaction.atomic():
        repo.follow(1, 60)


@both_databases
def test_a_caught_recording_failure_still_rolls_the_transaction_back(repo):
    """Catching the error must not let the caller commit writes whose call went unrecorded."""
    from django.db import DatabaseError, transaction

    with outbox_gone(), transaction.atomic():
        Unmirrored.objects.create(name="beside the call")
        with pytest.raises(DatabaseError):
            repo.follow(1, 61)
    assert not Unmirrored.objects.filter(name="beside the call").exists()


@both_databases
def test_calls_made_live_are_not_replayed_again_except_from_the_start(kinesis):
    with repositories("mirror"):
        repo = get(FollowStore)
        repo.follow(1, 70)
        repo.follow(2, 70)
        assert [e["row"]["live"] for e in recorded()] == [["main"], ["main"]]
        drain_and_replay()
        assert len(impl("main").log) == 2  # live only: replay left them out
        assert not MismatchRecord.objects.exists()
        impl("main").follows.clear()  # rebuilt
        impl("main").log.clear()
        call_command("mirror_replay", "--from-start", "--until-caught-up", stdout=StringIO())
        assert impl("main").follows == impl().follows and len(impl("main").log) == 2


@both_databases
def test_a_call_replay_cannot_make_goes_to_the_dead_letters(kinesis, repo):
    from django_mirror.models import DeadLetter

    repo.follow(1, 80)
    batch = OutboxBatch.objects.get()
    batch.payload = batch.payload.replace('"follow"', '"no_such_method"')
    batch.save()
    drain_and_replay()
    [letter] = DeadLetter.objects.all()
    assert "no method 'no_such_method'" in letter.reason and letter.model == INTERFACE


def _simple(self, user: int, channel: int = 3, tags: list | None = None) -> None: ...  # type: ignore[no-untyped-def]
def _keyword_only(self, user: int, *, channel: int = 3) -> None: ...  # type: ignore[no-untyped-def]
def _positional_only(self, user: int, /, channel: int) -> None: ...  # type: ignore[no-untyped-def]
def _variadic(self, *users: int, **options: int) -> None: ...  # type: ignore[no-untyped-def]
def _shadowing(self, _mirror_BoundCall: int, channel: int = 3) -> None: ...  # type: ignore[no-untyped-def]  # noqa: N803


@pytest.mark.parametrize(
    "function", [_simple, _keyword_only, _positional_only, _variadic, _shadowing]
)
@pytest.mark.parametrize(
    "args, kwargs",
    [((1,), {}), ((1, 2), {}), ((1,), {"channel": 2}), ((), {"user": 1}), ((1, 2, 3, 4), {})],
)
def test_calls_are_bound_as_the_signature_binds_them(
    function: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    """Recorded calls replay from these arguments: the generated binder must agree with
    ``inspect.Signature.bind``, refusals included."""
    signature = inspect.signature(function)
    try:
        expected = signature.bind(None, *args, **kwargs)
    except TypeError:
        with pytest.raises(TypeError):
            binder(signature)(*args, **kwargs)
        return
    expected.apply_defaults()
    bound = binder(signature)(*args, **kwargs)
    assert bound.args == expected.args[1:]
    assert bound.kwargs == expected.kwargs
    assert bound.arguments == {k: v for k, v in expected.arguments.items() if k != "self"}
