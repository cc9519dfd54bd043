"""Each test's outcome, recorded as the run reports it, written to a JSON file.

A failure or error raised in a parallel worker crosses to the parent pickled; an
exception or traceback that does not pickle would lose its whole batch of tests, so
the worker sends them as text (:class:`RemoteFailure` / :class:`RemoteError`).
"""

from __future__ import annotations

import traceback
import unittest
from types import TracebackType
from typing import Any

from django.test.runner import RemoteTestResult

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]

#: Outcomes from worst to best; a test keeps the worst it was given (subtests).
RANK = ("error", "failed", "xpass", "skipped", "xfail", "passed")
#: Outcomes that count as passing.
PASSING = frozenset({"passed", "xfail"})
MESSAGE_CHARS = 2000


class _Remote:
    """``args``: the original message, the original type's path, the whole traceback."""

    args: tuple[Any, ...]

    def __str__(self) -> str:
        return str(self.args[2]) if len(self.args) > 2 else str(self.args[0])


class RemoteFailure(_Remote, AssertionError):
    """A test failure from a worker, as text."""


class RemoteError(_Remote, Exception):
    """A test error from a worker, as text."""


def portable(err: ExcInfo, failure: bool) -> ExcInfo:
    exc_type, value, tb = err
    text = "".join(traceback.format_exception(exc_type, value, tb))
    cls = RemoteFailure if failure else RemoteError
    name = f"{exc_type.__module__}.{exc_type.__qualname__}"
    return (cls, cls(message(value), name, text), None)


def message(value: BaseException) -> str:
    """The exception's own message (the original one for a remote exception)."""
    if isinstance(value, _Remote):
        return str(value.args[0])
    try:
        text = str(value)
    except Exception:  # noqa: BLE001 - a broken __str__ must not lose the outcome
        text = repr(value)
    return f"{type(value).__name__}: {text}"[:MESSAGE_CHARS]


class PortableRemoteResult(RemoteTestResult):
    """A worker's result that sends failures and errors as text."""

    def addError(self, test: Any, err: ExcInfo) -> None:  # noqa: N802 - unittest's name
        super().addError(test, portable(err, failure=False))

    def addFailure(self, test: Any, err: ExcInfo) -> None:  # noqa: N802
        super().addFailure(test, portable(err, failure=True))

    def addSubTest(self, test: Any, subtest: Any, err: ExcInfo | None) -> None:  # noqa: N802
        if err is not None:
            err = portable(err, failure=issubclass(err[0], test.failureException))
        super().addSubTest(test, subtest, err)


class RecordingResult(unittest.TextTestResult):
    """The parent's result: prints as usual and keeps ``{test id: outcome}``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.outcomes: dict[str, dict[str, Any]] = {}
        #: Errors outside any one test (``setUpClass``, module imports), by their id.
        self.suite_errors: dict[str, str] = {}

    def _record(self, test: Any, outcome: str, err: ExcInfo | None = None) -> None:
        if isinstance(test, unittest.suite._ErrorHolder):
            self.suite_errors[test.id()] = message(err[1]) if err else outcome
            return
        entry = self.outcomes.setdefault(test.id(), {"outcome": outcome, "messages": []})
        if RANK.index(outcome) < RANK.index(entry["outcome"]):
            entry["outcome"] = outcome
        if err is not None:
            entry["messages"].append(message(err[1]))

    def addSuccess(self, test: Any) -> None:  # noqa: N802
        super().addSuccess(test)
        self._record(test, "passed")

    def addError(self, test: Any, err: ExcInfo) -> None:  # noqa: N802
        super().addError(test, err)
        self._record(test, "error", err)

    def addFailure(self, test: Any, err: ExcInfo) -> None:  # noqa: N802
        super().addFailure(test, err)
        self._record(test, "failed", err)

    def addSkip(self, test: Any, reason: str) -> None:  # noqa: N802
        super().addSkip(test, reason)
        self._record(test, "skipped")

    def addExpectedFailure(self, test: Any, err: ExcInfo) -> None:  # noqa: N802
        super().addExpectedFailure(test, err)
        self._record(test, "xfail")

    def addUnexpectedSuccess(self, test: Any) -> None:  # noqa: N802
        super().addUnexpectedSuccess(test)
        self._record(test, "xpass")

    def addSubTest(self, test: Any, subtest: Any, err: ExcInfo | None) -> None:  # noqa: N802
        super().addSubTest(test, subtest, err)
        if err is not None:
            failed = issubclass(err[0], test.failureException)
            self._record(test, "failed" if failed else "error", err)
