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
from django.test.utils import override_settings

from django_mirror.checks import check_settings

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
            config(model("testapp.Author", target={"BACKEND": "django_mirror.conf.ModelConfig"})),
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
        # W001: an explicit through model that is not mirrored
        (config(lambda c: c["MODELS"].pop("testapp.ShelfBook")), ["django_mirror.W001"]),
        # W002: nothing configured at all
        (None, ["django_mirror.W002"]),
    ],
)
def test_each_bad_setting_has_its_own_id(setting: Any, expected: list[str]):
    assert found(setting) == expected


def test_every_check_id_is_exercised():
    """Keeps this file honest when checks.py gains an id."""
    import re
    from pathlib import Path

    import django_mirror.checks

    source = Path(django_mirror.checks.__file__).read_text()
    declared = set(re.findall(r"django_mirror\.[EW]\d{3}", source))
    tested = set(re.findall(r"django_mirror\.[EW]\d{3}", Path(__file__).read_text()))
    assert declared <= tested


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
