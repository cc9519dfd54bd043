"""How django-mirror's own failures are counted: never raised into the host, never lost.

Background tasks (phase reads, statsd sends, the dashboard's figures, shipping after
commit) and guarded instrumentation report here; the statsd sender turns the counts
into ``internal_errors.<task>`` counters (see ``docs/metrics.md``).
"""

from __future__ import annotations

import logging
import sys
import threading
import time

logger = logging.getLogger("django_mirror")

#: Failures swallowed so far in this process (for tests and the curious).
count = 0

_lock = threading.Lock()
#: Failures per task since the statsd sender last took them.
_internal_errors: dict[str, int] = {}


def take_internal_errors() -> dict[str, int]:
    """The failures counted per task since the last call, and start counting anew."""
    global _internal_errors
    with _lock:
        taken, _internal_errors = _internal_errors, {}
    return taken


class RepeatedFailures:
    """The failures of one background task.

    Each is counted (``count`` and the task's ``internal_errors`` counter); the first in
    a row is logged at DEBUG (a blip that heals itself), one that repeats at WARNING, at
    most once a minute, so an operator sees a task that stays broken.
    """

    #: Seconds between WARNING lines of a failure that keeps repeating.
    WARN_EVERY = 60.0

    def __init__(self, task: str, what: str) -> None:
        self.task = task
        self.what = what
        self.in_a_row = 0
        self.warned_at: float | None = None

    def failed(self, detail: str = "") -> None:
        """Report the exception being handled, or a failure ``detail`` describes."""
        global count
        with _lock:
            count += 1
            _internal_errors[self.task] = _internal_errors.get(self.task, 0) + 1
            self.in_a_row += 1
            in_a_row = self.in_a_row
            now = time.monotonic()
            warn = in_a_row > 1 and (
                self.warned_at is None or now - self.warned_at >= self.WARN_EVERY
            )
            if warn:
                self.warned_at = now
        what = f"{self.what}: {detail}" if detail else self.what
        handling = sys.exc_info()[0] is not None
        if warn:
            logger.warning(
                "django-mirror: %s (%d times in a row)", what, in_a_row, exc_info=handling
            )
        else:
            logger.debug("django-mirror: %s", what, exc_info=handling)

    def succeeded(self) -> None:
        self.in_a_row = 0
