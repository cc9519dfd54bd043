"""The target written in docs/targets.md, taken from the page and run: capture, relay,
replay, copy, verify and shadow reads work against a store django-mirror does not ship."""

from __future__ import annotations

import re
from io import StringIO
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.db.models import F
from django.test import override_settings

from django_mirror import paused
from django_mirror.config import conf
from django_mirror.targets import get_target
from tests.conftest import both_databases, drain_and_replay
from tests.testapp.models import Counter

PAGE = Path(__file__).resolve().parent.parent / "docs" / "targets.md"
SECTION = PAGE.read_text().split("## Writing a target", 1)[1]
exec(re.search(r"```python\n(.*?)```", SECTION, re.S).group(1))  # type: ignore[union-attr]  # noqa: S102

BACKEND = {"BACKEND": f"{__name__}.DictTarget"}


@both_databases
def test_the_documented_target_takes_the_whole_pipeline(kinesis):
    models = {**settings.DJANGO_MIRROR["MODELS"], "testapp.Counter": {"target": BACKEND}}
    with override_settings(DJANGO_MIRROR={**settings.DJANGO_MIRROR, "MODELS": models}):
        with paused():
            old = Counter.objects.create(name="existed before capture", value=7)
        counters = [Counter.objects.create(name=f"c{i}", value=i) for i in range(10)]
        Counter.objects.filter(pk__in=[c.pk for c in counters[:4]]).update(value=F("value") * 3)
        Counter.objects.filter(pk=counters[-1].pk).delete()
        drain_and_replay()
        call_command("mirror_copy", "testapp.Counter", verbosity=0)
        out = StringIO()
        call_command("mirror_verify", "testapp.Counter", "--recheck-delay", "0", stdout=out)
        assert " 0 differ" in out.getvalue()
        store = get_target(conf.config_for_label("testapp.Counter"))  # type: ignore[arg-type]
        held = store.fetch(Counter, [c.pk for c in Counter.objects.all()])
        assert {int(k): r["value"] for k, r in held.items()} == dict(
            Counter.objects.values_list("pk", "value")
        )
        assert str(old.pk) in held and str(counters[-1].pk) not in held
