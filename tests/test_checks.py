"""System checks: each bad ``DJANGO_MIRROR`` setting is reported under its own id before
anything runs, and a valid configuration reports nothing."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from django.conf import settings
from django.core.checks import Error, Warning
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import models
from django.test.utils import isolate_apps, override_settings

from django_mirror.checks import check_settings
from django_mirror.streams import Stream

VALID: dict[str, Any] = copy.deepcopy(settings.DJANGO_MIRROR)


def config(change: Callable[[dict[str, Any]], Any] | None = None) -> dict[str, Any]:
    """A copy of the test suite's valid setting, altered by ``change``."""
    value = copy.deepcopy(VALID)
    if change is not None:
        change(value)
    return value


def model(label: str, **options: Any) -> Callable[[dict[str, Any]], Any]:
    """Mirror one more model with these options."""
    return lambda c: c["MODELS"].__setitem__(label, {"target": "new", **options})


class ShardedStream(Stream):
    """A stream backend of the user's own, with a required option and no ``**kwargs``."""

    def __init__(self, stream_name: str, region_name: str, endpoint_url: Any, partitions: int):
        self.partitions = partitions


class OpenStream(Stream):
    """A backend that takes any keyword: its options cannot be checked by signature."""

    def __init__(self, **options: Any) -> None:
        self.options = options


def stream_backend(path: str, **options: Any) -> dict[str, Any]:
    return config(lambda c: c.__setitem__("STREAM", {"BACKEND": path, "OPTIONS": options}))


def found(setting: Any) -> list[str]:
    with override_settings(DJANGO_MIRROR=setting):
        return [message.id for message in check_settings()]


def test_the_valid_test_configuration_passes():
    assert check_settings() == []
    assert found(config()) == []


def test_a_minimal_configuration_passes():
    """Defaults fill everything a user leaves out."""
    assert found({"MODELS": {"testapp.Author": {"target": "new"}}}) == []


def test_a_full_configuration_passes():
    full = config(
        model(
            "testapp.Counter",
            phase="mirror",
            shadow_read_rate=1,
            exclude_fields=["value"],
            redact_fields=["name"],
            compare="django_mirror.checks.check_settings",
        )
    )
    full["MODELS"]["testapp.Tag"] = {"target": "new", "phase": "off"}
    full["MODELS"]["testapp.Author"] = {
        "target": {
            "BACKEND": "django_mirror.targets.database.DatabaseTarget",
            "OPTIONS": {"alias": "new"},
        }
    }
    full["SHADOW"] = {"TIMEOUT": 1.0}
    full["RELAY"] = {"ON_COMMIT": "sync"}
    assert found(full) == []


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        # E001: the setting, MODELS or one model's options are not dicts
        ("capture everything", ["django_mirror.E001"]),
        ({"MODELS": ["testapp.Author"]}, ["django_mirror.E001"]),
        (
            config(lambda c: c["MODELS"].__setitem__("testapp.Author", "new")),
            ["django_mirror.E001"],
        ),
        # E002: a label that names no installed model
        (config(model("testapp.Nope")), ["django_mirror.E002"]),
        (config(model("Author")), ["django_mirror.E002"]),
        (config(model("nosuchapp.Author")), ["django_mirror.E002"]),
        # E003: SOURCE is not a DATABASES alias
        (config(lambda c: c.__setitem__("SOURCE", "legacy")), ["django_mirror.E003"]),
        # E004: target missing, or not a DATABASES alias
        (
            config(lambda c: c["MODELS"].__setitem__("testapp.Author", {"phase": "capture"})),
            ["django_mirror.E004"],
        ),
        (config(model("testapp.Author", target=None)), ["django_mirror.E004"]),
        (config(model("testapp.Author", target="newdb")), ["django_mirror.E004"]),
        # E005: target equal to the source
        (config(model("testapp.Author", target="default")), ["django_mirror.E005"]),
        # E006: unknown phase
        (config(model("testapp.Author", phase="paused")), ["django_mirror.E006"]),
        (config(model("testapp.Author", phase="Capture")), ["django_mirror.E006"]),
        # E007: shadow_read_rate outside 0..1
        (config(model("testapp.Author", shadow_read_rate=1.5)), ["django_mirror.E007"]),
        (config(model("testapp.Author", shadow_read_rate=-0.1)), ["django_mirror.E007"]),
        (config(model("testapp.Author", shadow_read_rate="half")), ["django_mirror.E007"]),
        (config(model("testapp.Author", shadow_read_rate=True)), ["django_mirror.E007"]),
        # E008: a backend path that cannot be imported (stream or target)
        (
            config(lambda c: c["STREAM"].__setitem__("BACKEND", "django_mirror.streams.Nope")),
            ["django_mirror.E008"],
        ),
        (
            config(model("testapp.Author", target={"BACKEND": "no.such.Target"})),
            ["django_mirror.E008"],
        ),
        (config(model("testapp.Author", target={"OPTIONS": {}})), ["django_mirror.E008"]),
        (config(model("testapp.Author", target=42)), ["django_mirror.E008"]),
        # E009: Kinesis without stream name or region
        (
            config(lambda c: c["STREAM"]["OPTIONS"].__setitem__("stream_name", "")),
            ["django_mirror.E009"],
        ),
        (
            config(lambda c: c["STREAM"]["OPTIONS"].__setitem__("region_name", None)),
            ["django_mirror.E009"],
        ),
        # E010: exclude_fields / redact_fields naming no field, or excluding the key
        (config(model("testapp.Author", exclude_fields=["nickname"])), ["django_mirror.E010"]),
        (config(model("testapp.Author", redact_fields=["nickname"])), ["django_mirror.E010"]),
        (config(model("testapp.Author", exclude_fields=["id"])), ["django_mirror.E010"]),
        # E011: default manager without MirroredQuerySet
        (config(model("testapp.Unmirrored")), ["django_mirror.E011"]),
        # E012: a primary key the pipeline cannot carry
        (config(model("testapp.Reading")), ["django_mirror.E011", "django_mirror.E012"]),
        # E013: unknown per-model option
        (config(model("testapp.Author", targets="new")), ["django_mirror.E013"]),
        # E014: compare callable that cannot be imported
        (config(model("testapp.Author", compare="tests.nowhere.compare")), ["django_mirror.E014"]),
        # E015: unknown after-commit relay mode
        (config(lambda c: c.__setitem__("RELAY", {"ON_COMMIT": "later"})), ["django_mirror.E015"]),
        # E019: a target backend that is no Target or refuses its OPTIONS
        (
            config(
                model("testapp.Author", target={"BACKEND": "django_mirror.config.conf.ModelConfig"})
            ),
            ["django_mirror.E019"],
        ),
        (
            config(
                model(
                    "testapp.Author",
                    target={
                        "BACKEND": "django_mirror.targets.DynamoDBTarget",
                        "OPTIONS": {"tabel": "x"},
                    },
                )
            ),
            ["django_mirror.E019"],
        ),
        (
            config(
                model(
                    "testapp.Author",
                    target={
                        "BACKEND": "django_mirror.targets.DynamoDBTarget",
                        "OPTIONS": {"table_name": "a/{model_name}"},
                    },
                )
            ),
            ["django_mirror.E019"],
        ),
        # E016: a SHADOW option unknown or out of range
        (config(lambda c: c.__setitem__("SHADOW", {"POOL": 4})), ["django_mirror.E016"]),
        (config(lambda c: c.__setitem__("SHADOW", {"POOL_SIZE": 0})), ["django_mirror.E016"]),
        (config(lambda c: c.__setitem__("SHADOW", {"QUEUE_SIZE": 1.5})), ["django_mirror.E016"]),
        (config(lambda c: c.__setitem__("SHADOW", {"TIMEOUT": "2s"})), ["django_mirror.E016"]),
        (config(lambda c: c.__setitem__("SHADOW", {"CONTROL_RATE": 2})), ["django_mirror.E016"]),
        # E017: a PHASES option unknown or out of range
        (config(lambda c: c.__setitem__("PHASES", {"REFRESH": 30})), ["django_mirror.E017"]),
        (config(lambda c: c.__setitem__("PHASES", {"KEY_GAP": -1})), ["django_mirror.E017"]),
        (config(lambda c: c.__setitem__("PHASES", {"LAG": 1})), ["django_mirror.E017"]),
        # E032: a WAL option unknown or out of range
        (config(lambda c: c.__setitem__("WAL", {"MAX_RETAINED": 1})), ["django_mirror.E032"]),
        (
            config(lambda c: c.__setitem__("WAL", {"MAX_RETAINED_BYTES": 0})),
            ["django_mirror.E032"],
        ),
        (
            config(lambda c: c.__setitem__("WAL", {"MAX_RETAINED_BYTES": "1G"})),
            ["django_mirror.E032"],
        ),
        # E001: a nested settings dict that is not a dict
        (config(lambda c: c.__setitem__("RELAY", "off")), ["django_mirror.E001"]),
        (
            config(lambda c: c["STREAM"].__setitem__("OPTIONS", "mirror-ops")),
            ["django_mirror.E001"],
        ),
        # E015: an unknown RELAY option
        (config(lambda c: c.__setitem__("RELAY", {"ON_COMIT": "off"})), ["django_mirror.E015"]),
        # E023: an unknown top-level key
        (config(lambda c: c.__setitem__("RELAYS", {})), ["django_mirror.E023"]),
        # E024: an unknown STREAM key
        (config(lambda c: c["STREAM"].__setitem__("OPTION", {})), ["django_mirror.E024"]),
        # E025: an unknown REPLAY option
        (config(lambda c: c.__setitem__("REPLAY", {"BATCH": 10})), ["django_mirror.E025"]),
        # E015 / E025: a RELAY or REPLAY value that is no number in range (reading it
        # would silently keep the default)
        (config(lambda c: c.__setitem__("RELAY", {"BATCH_SIZE": "abc"})), ["django_mirror.E015"]),
        (config(lambda c: c.__setitem__("RELAY", {"LEASE_SECONDS": 0})), ["django_mirror.E015"]),
        (config(lambda c: c.__setitem__("REPLAY", {"BATCH_SIZE": 20_000})), ["django_mirror.E025"]),
        (config(lambda c: c.__setitem__("REPLAY", {"IDLE_SLEEP": -1})), ["django_mirror.E025"]),
        (
            config(lambda c: c.__setitem__("REPLAY", {"HEAL_INTERVAL": "10"})),
            ["django_mirror.E025"],
        ),
        # E026: stream OPTIONS the backend's constructor does not take, or lacks
        (
            config(lambda c: c["STREAM"]["OPTIONS"].__setitem__("stream_nmae", "x")),
            ["django_mirror.E026"],
        ),
        (
            config(lambda c: c["STREAM"]["OPTIONS"].__setitem__("retries", 3)),
            ["django_mirror.E026"],
        ),
        (
            stream_backend("tests.test_checks.ShardedStream", partitions=2, shards=2),
            ["django_mirror.E026"],
        ),
        (
            stream_backend("tests.test_checks.ShardedStream", shard=2),
            ["django_mirror.E026", "django_mirror.E026"],
        ),
        # W001: an explicit through model that is not mirrored
        (config(lambda c: c["MODELS"].pop("testapp.ShelfBook")), ["django_mirror.W001"]),
        # W002: nothing configured at all
        (None, ["django_mirror.W002"]),
    ],
)
def test_each_bad_setting_has_its_own_id(setting: Any, expected: list[str]):
    assert found(setting) == expected


def test_every_check_id_is_exercised():
    """Keeps this file honest when a module of django_mirror.checks gains an id."""
    import re
    from pathlib import Path

    import django_mirror.checks

    package = Path(django_mirror.checks.__file__).parent
    source = "".join(module.read_text() for module in sorted(package.glob("*.py")))
    declared = set(re.findall(r"django_mirror\.[EW]\d{3}", source))
    tested = set(re.findall(r"django_mirror\.[EW]\d{3}", Path(__file__).read_text()))
    assert declared <= tested


def test_retained_wal_past_the_limit_is_warned_about(monkeypatch: pytest.MonkeyPatch):
    """W010, as the check sees a slot (the cluster tests in test_wal_capture.py read a
    real one): past ``WAL["MAX_RETAINED_BYTES"]`` only, and a warning, never an error."""
    from django_mirror.capture.wal import slot
    from django_mirror.checks import capture

    def retaining(lag: int) -> slot.SlotState:
        return slot.SlotState("logical", True, tuple(slot.tables()), True, lag)

    monkeypatch.setattr(capture, "_wal_aliases", lambda: ["default"])
    limited = config(lambda c: c.__setitem__("WAL", {"MAX_RETAINED_BYTES": 1000}))
    with override_settings(DJANGO_MIRROR=limited):
        for lag, expected in ((1000, []), (1001, ["django_mirror.W010"])):
            monkeypatch.setattr(slot, "state", lambda alias, lag=lag: retaining(lag))
            messages = capture.check_wal_source(databases=["default"])
            assert [m.id for m in messages] == expected
            assert all(type(m) is Warning for m in messages)


def test_errors_are_errors_and_warnings_warnings():
    """Errors stop manage.py commands; warnings only inform."""
    with override_settings(DJANGO_MIRROR=config(model("testapp.Author", target="default"))):
        (message,) = check_settings()
        assert type(message) is Error and message.is_serious()
    with override_settings(DJANGO_MIRROR=config(lambda c: c["MODELS"].pop("testapp.ShelfBook"))):
        (message,) = check_settings()
        assert type(message) is Warning and not message.is_serious()
        assert "testapp.ShelfBook" in message.msg and "testapp.ShelfBook" in message.hint


def test_one_model_with_several_problems_reports_each():
    bad = config(
        model("testapp.Author", target="default", phase="later", shadow_read_rate=2, extra=1)
    )
    assert sorted(found(bad)) == [
        "django_mirror.E005",
        "django_mirror.E006",
        "django_mirror.E007",
        "django_mirror.E013",
    ]


def test_manage_py_check_refuses_a_bad_setting():
    with override_settings(DJANGO_MIRROR=config(model("testapp.Author", target="newdb"))):
        with pytest.raises(SystemCheckError, match=r"django_mirror\.E004"):
            call_command("check", databases=[])


def test_a_sampled_model_without_the_middleware_is_warned_about():
    from django_mirror.checks import check_middleware

    sampled = config(model("testapp.Author", phase="mirror", shadow_read_rate=0.1))
    with override_settings(DJANGO_MIRROR=sampled):
        assert check_middleware() == []  # the test settings install it
        with override_settings(MIDDLEWARE=[]):
            (message,) = check_middleware()
    assert message.id == "django_mirror.W003" and "testapp.Author" in message.msg
    with override_settings(DJANGO_MIRROR=config(), MIDDLEWARE=[]):
        assert check_middleware() == []  # nothing sampled, nothing to warn about


def test_promotion_without_the_router_is_an_error_and_its_absence_a_warning():
    from django_mirror.checks import check_router

    assert check_router() == []  # the test settings install it
    with override_settings(DATABASE_ROUTERS=[]):
        (warning,) = check_router()
        assert warning.id == "django_mirror.W004" and "testapp.Author" in warning.msg
        promoted = config(model("testapp.Author", phase="promoted"))
        with override_settings(DJANGO_MIRROR=promoted):
            (error,) = check_router()
    assert error.id == "django_mirror.E018" and "testapp.Author" in error.msg


def repository_setting(**options: Any) -> dict[str, Any]:
    entry = {
        "source": "tests.testapp.repositories.SourceFollows",
        "targets": {"main": "tests.testapp.repositories.TargetFollows"},
        "phase": "capture",
        **options,
    }
    return config(
        lambda c: c.__setitem__("REPOSITORIES", {"tests.testapp.repositories.FollowStore": entry})
    )


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        (repository_setting(), []),
        (config(lambda c: c.__setitem__("REPOSITORIES", ["x"])), ["django_mirror.E020"]),
        (
            config(lambda c: c.__setitem__("REPOSITORIES", {"tests.testapp.models.Author": {}})),
            ["django_mirror.E020"],
        ),
        (repository_setting(sources="x"), ["django_mirror.E020"]),
        (repository_setting(phase="promoted"), ["django_mirror.E021"]),
        (repository_setting(shadow_read_rate=3), ["django_mirror.E021"]),
        (repository_setting(source="tests.testapp.nowhere.Follows"), ["django_mirror.E022"]),
        (
            repository_setting(targets={"x": "tests.testapp.models.Author"}),
            ["django_mirror.E022"],
        ),
    ],
)
def test_repository_settings_are_checked(setting: Any, expected: list[str]):
    assert found(setting) == expected


def test_a_sqlite_source_in_deferred_mode_is_warned_about():
    """django-mirror's threads write to the source: Django's default DEFERRED mode lets a
    transaction of the app that reads first fail at once; IMMEDIATE makes it wait."""
    from django_mirror.checks import check_sqlite_options

    sqlite = {"ENGINE": "django.db.backends.sqlite3", "NAME": "app.sqlite3"}
    postgres = {"ENGINE": "django.db.backends.postgresql", "NAME": "target"}
    with override_settings(DATABASES={"default": sqlite, "new": postgres}):
        (warning,) = check_sqlite_options()
    assert warning.id == "django_mirror.W006" and "'default'" in warning.msg
    assert "IMMEDIATE" in warning.hint and not warning.is_serious()
    immediate = {**sqlite, "OPTIONS": {"transaction_mode": "IMMEDIATE"}}
    with override_settings(DATABASES={"default": immediate, "new": postgres}):
        assert check_sqlite_options() == []
    with override_settings(DATABASES={"default": postgres, "new": sqlite}):
        (warning,) = check_sqlite_options()  # a SQLite target is written to as well
    assert "'new'" in warning.msg


def test_a_stream_backend_that_takes_its_options_passes():
    assert found(stream_backend("tests.test_checks.ShardedStream", partitions=2)) == []
    assert found(stream_backend("tests.test_checks.OpenStream", anything=1)) == []
    kinesis = config(lambda c: c["STREAM"]["OPTIONS"].update(shard_count=2, max_attempts=3))
    assert found(kinesis) == []


def _hints(setting: Any) -> list[tuple[str, str]]:
    with override_settings(DJANGO_MIRROR=setting):
        return [(message.id, message.hint) for message in check_settings()]


@pytest.mark.parametrize(
    ("change", "check_id", "meant"),
    [
        (lambda c: c.__setitem__("REPLAYS", {}), "E023", "REPLAY"),
        (lambda c: c.__setitem__("models", c.pop("MODELS")), "E023", "MODELS"),
        (lambda c: c["STREAM"].__setitem__("BACKEDN", "x"), "E024", "BACKEND"),
        (lambda c: c.__setitem__("RELAY", {"on_commit": "off"}), "E015", "ON_COMMIT"),
        (lambda c: c.__setitem__("REPLAY", {"BATCHSIZE": 5}), "E025", "BATCH_SIZE"),
        (lambda c: c.__setitem__("SHADOW", {"POOL": 4}), "E016", "POOL_SIZE"),
        (lambda c: c.__setitem__("PHASES", {"REFRESHES": 1.0}), "E017", "REFRESH"),
        (lambda c: c["STREAM"]["OPTIONS"].__setitem__("stream_nmae", "x"), "E026", "stream_name"),
        (lambda c: c["STREAM"]["OPTIONS"].__setitem__("max_attempt", 3), "E026", "max_attempts"),
        (lambda c: c["STREAM"]["OPTIONS"].__setitem__("readtimeout", 3), "E026", "read_timeout"),
    ],
)
def test_an_unknown_key_is_an_error_that_names_the_key_meant(change, check_id, meant):
    """A misspelt key would otherwise be ignored (its default used without a word) or,
    among the stream's OPTIONS, raise TypeError at the first write."""
    hints = _hints(config(change))
    assert [i for i, _ in hints] == [f"django_mirror.{check_id}"]
    assert hints[0][1].startswith(f"Did you mean {meant!r}? Known options: ")


def test_an_unknown_key_nothing_resembles_lists_the_known_ones():
    ((check_id, hint),) = _hints(config(lambda c: c.__setitem__("RELAY", {"XYZZY": 1})))
    assert check_id == "django_mirror.E015"
    assert hint == "Known options: ON_COMMIT, BATCH_SIZE, LEASE_SECONDS, LINGER."


def test_a_missing_stream_option_names_it():
    with override_settings(DJANGO_MIRROR=stream_backend("tests.test_checks.ShardedStream")):
        (message,) = check_settings()
    assert message.id == "django_mirror.E026"
    assert "lacks 'partitions'" in message.msg and "ShardedStream" in message.msg


@pytest.mark.django_db
def test_the_first_write_with_a_bad_setting_logs_each_error(caplog, monkeypatch):
    """No system check runs in a WSGI server: the first write of the process reports the
    settings errors at ERROR, and its event still waits in the outbox."""
    import logging

    from django_mirror.config import conf
    from django_mirror.models import OutboxBatch
    from tests.testapp.models import Author

    def bad(c: dict[str, Any]) -> None:
        c["STREAM"]["OPTIONS"]["stream_nmae"] = "ops"
        c["RELAY"] = {"ON_COMMIT": "off", "BATCHSIZE": 10}

    monkeypatch.setattr(conf, "_looked_up", False)  # a new process
    with override_settings(DJANGO_MIRROR=config(bad)), caplog.at_level(logging.ERROR):
        ada = Author.objects.create(name="Ada")
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert "(django_mirror.E026)" in errors[0] and "'stream_name'" in errors[0]
    assert "(django_mirror.E015)" in errors[1] and "'BATCH_SIZE'" in errors[1]
    assert all(e.startswith("django-mirror is misconfigured:") for e in errors)
    assert OutboxBatch.objects.filter(model="testapp.Author").count() == 1
    assert Author.objects.get().pk == ada.pk


@pytest.mark.django_db
def test_the_first_write_logs_nothing_when_the_settings_are_valid(caplog, monkeypatch):
    import logging

    from django_mirror.config import conf
    from tests.testapp.models import Author

    monkeypatch.setattr(conf, "_looked_up", False)
    with caplog.at_level(logging.WARNING, logger="django_mirror"):
        Author.objects.create(name="Ada")
    assert [r for r in caplog.records if r.name == "django_mirror"] == []


def _mirroring_only(monkeypatch: pytest.MonkeyPatch, *mirrored: type[models.Model]) -> None:
    """These models, defined in a test, as the mirrored ones (their app registry is not
    the one ``DJANGO_MIRROR['MODELS']`` labels resolve in)."""
    from django_mirror.config import conf

    monkeypatch.setattr(conf, "mirrored_models", lambda: dict.fromkeys(mirrored))


@isolate_apps("tests.testapp")
def test_a_mirrored_model_with_python_level_on_delete_passes(monkeypatch):
    """Django's collector runs CASCADE, SET_NULL and SET_DEFAULT, and capture sees it; on
    Django 5.2 there is no other kind, so this is the whole check there."""
    from django_mirror.checks import check_database_on_delete

    class Shop(models.Model):
        class Meta:
            app_label = "testapp"

    class Item(models.Model):
        shop = models.ForeignKey(Shop, models.CASCADE)
        seller = models.ForeignKey(Shop, models.SET_NULL, null=True, related_name="+")
        buyer = models.ForeignKey(Shop, models.SET_DEFAULT, default=1, related_name="+")

        class Meta:
            app_label = "testapp"

    _mirroring_only(monkeypatch, Shop, Item)
    assert check_database_on_delete() == []


@pytest.mark.skipif(
    not hasattr(models, "DB_CASCADE"), reason="database-level on_delete is new in Django 6.1"
)
@isolate_apps("tests.testapp")
def test_a_mirrored_model_with_database_level_on_delete_is_an_error(monkeypatch):
    """The database deletes or rewrites those rows itself: no collector, no signal, no
    event. A child that is not mirrored loses nothing, whoever its parent is."""
    from django_mirror.checks import check_database_on_delete

    class Shop(models.Model):
        class Meta:
            app_label = "testapp"

    class Item(models.Model):
        shop = models.ForeignKey(Shop, models.DB_CASCADE)
        seller = models.ForeignKey(Shop, models.DB_SET_NULL, null=True, related_name="+")
        buyer = models.ForeignKey(Shop, models.DB_SET_DEFAULT, db_default=1, related_name="+")

        class Meta:
            app_label = "testapp"

    class Note(models.Model):  # not mirrored
        shop = models.ForeignKey(Shop, models.DB_CASCADE)

        class Meta:
            app_label = "testapp"

    _mirroring_only(monkeypatch, Item)  # the parent need not be mirrored
    errors = check_database_on_delete()
    assert [(e.id, e.obj) for e in errors] == [
        ("django_mirror.E027", Item._meta.get_field(name)) for name in ("shop", "seller", "buyer")
    ]
    assert all(e.is_serious() and "testapp.Item is mirrored" in e.msg for e in errors)
    assert "on_delete=models.DB_CASCADE" in errors[0].msg and "delete its rows" in errors[0].msg
    assert "rewrite its rows" in errors[1].msg and "captures no event" in errors[1].msg
    assert [e.hint.split(":")[0] for e in errors] == [
        "Use on_delete=models.CASCADE",
        "Use on_delete=models.SET_NULL",
        "Use on_delete=models.SET_DEFAULT",
    ]
    _mirroring_only(monkeypatch, Shop)  # a mirrored parent, children not mirrored
    assert check_database_on_delete() == []


@pytest.mark.parametrize(
    ("version", "warned"),
    [
        ((5, 1, 9, "final", 0), True),
        ((5, 2, 0, "final", 0), False),
        ((6, 1, 3, "final", 0), False),
        ((6, 9, 0, "alpha", 0), False),
        ((7, 0, 0, "alpha", 0), True),
    ],
)
def test_a_django_version_outside_the_tested_range_is_warned_about(monkeypatch, version, warned):
    import django

    from django_mirror.checks import check_django_version

    monkeypatch.setattr(django, "VERSION", version)
    messages = check_django_version()
    if not warned:
        assert messages == []
        return
    (warning,) = messages
    assert type(warning) is Warning and warning.id == "django_mirror.W007"
    assert f"Django {django.get_version()} is outside" in warning.msg
    assert ">=5.2,<7" in warning.msg


def test_the_version_check_tests_what_pyproject_declares():
    import tomllib
    from pathlib import Path

    from packaging.requirements import Requirement

    from django_mirror.checks import TESTED_DJANGO

    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    (django_requirement,) = [
        Requirement(r) for r in project["project"]["dependencies"] if r.startswith("Django")
    ]
    low, high = TESTED_DJANGO
    assert str(django_requirement.specifier) == f"<{high[0]},>={low[0]}.{low[1]}"


@isolate_apps("tests.testapp")
def test_each_refused_primary_key_says_why():
    """E012 names the reason a key cannot key events, so the docs' explanation is found
    from the message; the keys it supports pass."""
    from django_mirror.checks import _pk_refusal

    def model(name: str, base: type[models.Model] = models.Model, **fields: Any) -> Any:
        meta = type("Meta", (), {"app_label": "testapp"})
        return type(name, (base,), {"__module__": __name__, "Meta": meta, **fields})

    parent = model("Parent")
    child = model("Child", parent)
    refused = {
        child: "multi-table child",
        model(
            "Price", id=models.DecimalField(primary_key=True, max_digits=5, decimal_places=2)
        ): "several texts",
        model("Ratio", id=models.FloatField(primary_key=True)): "several texts",
        model("Day", id=models.DateField(primary_key=True)): "integer, char and UUID values only",
        model("Essay", id=models.TextField(primary_key=True)): "integer, char and UUID values only",
        model("Slug", id=models.CharField(primary_key=True, max_length=300)): "255 characters",
    }
    if hasattr(models, "CompositePrimaryKey"):
        pair = {"a": models.IntegerField(), "b": models.IntegerField()}
        refused[model("Pair", pk=models.CompositePrimaryKey("a", "b"), **pair)] = "composite"
    for refused_model, reason in refused.items():
        assert reason in (_pk_refusal(refused_model) or ""), refused_model
    for supported in (
        parent,
        model("Code", id=models.CharField(primary_key=True, max_length=255)),
        model("Token", id=models.UUIDField(primary_key=True)),
        model("Small", id=models.SmallAutoField(primary_key=True)),
    ):
        assert _pk_refusal(supported) is None, supported


class _Opaque:
    """A value with no JSON form, no text a field reads back and no plain value."""


class _OpaqueField(models.Field):
    def get_internal_type(self) -> str:
        return "TextField"

    def to_python(self, value: Any) -> Any:
        return value if isinstance(value, _Opaque) else _Opaque()

    def get_prep_value(self, value: Any) -> Any:
        return _Opaque()


@isolate_apps("tests.testapp")
def test_a_field_whose_values_cannot_be_carried_is_an_error(monkeypatch):
    from django_mirror.checks import check_field_values
    from django_mirror.config import conf

    calls: list[str] = []

    class _ReadsOpaque(_OpaqueField):
        """No default: found by what it makes of a value read from the database."""

        def from_db_value(self, value: Any, expression: Any, connection: Any) -> Any:
            return _Opaque()

    class Blob(models.Model):
        opaque = _OpaqueField(default=_Opaque())
        made = _OpaqueField(default=lambda: calls.append("made") or _Opaque())
        read = _ReadsOpaque(null=True)
        name = models.CharField(max_length=10, default="x")

        class Meta:
            app_label = "testapp"

    _mirroring_only(monkeypatch, Blob)
    opaque, read = check_field_values()
    assert opaque.id == read.id == "django_mirror.E028"
    assert (opaque.obj.name, read.obj.name) == ("opaque", "read")
    assert calls == []  # a callable default may write (get_or_create()): never called
    assert "'opaque'" in opaque.hint and "exclude_fields" in opaque.hint
    monkeypatch.setattr(conf, "model_config", lambda model: _Excluding("opaque", "read"))
    assert check_field_values() == []


class _Excluding:
    def __init__(self, *fields: str) -> None:
        self.exclude_fields = fields


def test_settings_that_start_a_group_split_are_warned_about():
    from django.conf import settings
    from django.test import override_settings

    from django_mirror.checks import check_group_phases

    assert check_group_phases() == []
    base = settings.DJANGO_MIRROR
    split = {**base["MODELS"], "testapp.Tag": {**base["MODELS"]["testapp.Tag"], "phase": "off"}}
    with override_settings(DJANGO_MIRROR={**base, "MODELS": split}):
        (warning,) = check_group_phases()
    assert warning.id == "django_mirror.W008"
    assert "testapp.Tag: off" in warning.msg and "testapp.Author: capture" in warning.msg


def test_capture_wal_is_checked():
    """CAPTURE's value, a PostgreSQL source, and what the log needs there (the checks
    against a real cluster are in tests/test_wal_capture.py)."""
    from unittest import mock

    from django.db import connections

    from django_mirror.capture.wal import slot
    from django_mirror.checks import capture

    base = settings.DJANGO_MIRROR
    with override_settings(DJANGO_MIRROR={**base, "CAPTURE": "binlog"}):
        assert [m.id for m in capture.check_capture()] == ["django_mirror.E029"]
    with override_settings(DJANGO_MIRROR={**base, "CAPTURE": "orm"}):
        assert capture.check_capture() == []
    with override_settings(DJANGO_MIRROR={**base, "CAPTURE": "wal"}):
        ids = [m.id for m in capture.check_capture()]
        assert ids == (
            [] if connections["default"].vendor == "postgresql" else ["django_mirror.E030"]
        )
        broken = slot.SlotState("replica", False, (), False, None)
        with (
            mock.patch.object(capture, "_wal_aliases", return_value=["default"]),
            mock.patch.object(slot, "state", return_value=broken),
        ):
            found = capture.check_wal_source(databases=["default"])
            assert capture.check_wal_source(databases=[]) == []
    assert [m.id for m in found] == ["django_mirror.E031", "django_mirror.W009"]
    assert "SELECT pg_create_logical_replication_slot" in found[1].hint
