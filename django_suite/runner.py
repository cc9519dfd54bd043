"""``TEST_RUNNER`` of a suite run: Django's ``DiscoverRunner`` recording every test's
outcome to the JSON file named by ``DJANGO_SUITE_RESULTS``.

Recording in the runner, rather than parsing the printed output, survives parallel
workers, subtests and failures in ``setUpClass``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import django
from django.db import connection
from django.test.runner import DiscoverRunner, ParallelTestSuite, RemoteTestRunner

from django_suite import mirroring
from django_suite.outcomes import PortableRemoteResult, RecordingResult


class PortableRemoteRunner(RemoteTestRunner):
    resultclass = PortableRemoteResult


class PortableParallelSuite(ParallelTestSuite):
    runner_class = PortableRemoteRunner


class RecordingRunner(DiscoverRunner):
    parallel_test_suite = PortableParallelSuite

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.started = time.monotonic()
        self.refused: dict[str, list[str]] = {}
        if mirroring.enabled():
            self.refused = mirroring.prepare()

    def get_databases(self, suite: Any) -> dict[str, bool]:
        """In phase ``mirror``, every test may also use the target (see ``mirroring``)."""
        if mirroring.shadowing():
            mirroring.add_target(suite)
        return super().get_databases(suite)

    def run_checks(self, databases: Any) -> None:
        if mirroring.enabled():  # again: test apps may have changed the registry since
            self.refused.update(mirroring.prepare())
        super().run_checks(databases)

    def get_resultclass(self) -> type:
        return RecordingResult

    def run_suite(self, suite: Any, **kwargs: Any) -> Any:
        with mirroring.shadow_scope():
            result = super().run_suite(suite, **kwargs)
        self._write(result)
        return result

    def teardown_databases(self, old_config: Any, **kwargs: Any) -> None:
        if mirroring.enabled():
            mirroring.stop_threads()
        super().teardown_databases(old_config, **kwargs)

    def _write(self, result: RecordingResult) -> None:
        path = os.environ.get("DJANGO_SUITE_RESULTS")
        if not path:
            return
        data = {
            "django": django.get_version(),
            "vendor": connection.vendor,
            "mirrored": mirroring.enabled(),
            "mirrored_models": mirroring.mirrored_model_count(),
            "refused_models": self.refused,
            "phase": mirroring.phase(),
            "events": mirroring.events_written(),
            "counters": mirroring.counters(),
            "seconds": round(time.monotonic() - self.started, 1),
            "tests": result.outcomes,
            "suite_errors": result.suite_errors,
        }
        Path(path).write_text(json.dumps(data, indent=1, sort_keys=True))
