"""Stock against mirrored, test by test.

A regression is a test that passes stock (or fails as expected) and, mirrored, fails,
errors, is skipped or does not run at all. A failure of ``assertNumQueries`` alone
("N != M : N queries executed, M expected") is a query-count difference, listed apart:
capture adds statements on purpose (docs/django-suite.md counts them per write path).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django_suite.outcomes import PASSING

QUERY_COUNT = re.compile(r"^(?:[\w.]+: )?\d+ != \d+ : \d+ queries executed, \d+ expected")
ACCEPTED = Path(__file__).resolve().parent / "accepted.txt"


@dataclass
class Difference:
    test: str
    outcome: str  # mirrored: failed | error | skipped | xpass | not run
    message: str


@dataclass
class Comparison:
    regressions: list[Difference] = field(default_factory=list)
    query_counts: list[Difference] = field(default_factory=list)
    accepted: list[tuple[Difference, str]] = field(default_factory=list)


def accepted_differences(backend: str, path: Path = ACCEPTED) -> dict[str, str]:
    """``{test id: reason}`` from ``accepted.txt``: ``BACKEND TEST_ID  # reason`` lines,
    BACKEND being ``sqlite``, ``postgresql`` or ``*``; a line without a reason is refused."""
    accepted: dict[str, str] = {}
    if not path.exists():
        return accepted
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        entry, _, reason = line.partition(" # ")
        parts = entry.split()
        if len(parts) != 2 or not reason.strip():
            raise ValueError(f"{path}:{number}: want 'BACKEND TEST_ID  # reason', got {raw!r}")
        if parts[0] in ("*", backend):
            accepted[parts[1]] = reason.strip()
    return accepted


def _suite_error(test: str, suite_errors: dict[str, str]) -> str:
    """The error of the class or module a test belongs to (``setUpClass (a.b.C)``)."""
    for holder, text in suite_errors.items():
        inner = holder[holder.find("(") + 1 : holder.rfind(")")] if "(" in holder else holder
        if inner and (test == inner or test.startswith(inner + ".")):
            return f"{holder}: {text}"
    return "did not run"


def compare(
    stock: dict[str, Any], mirrored: dict[str, Any], accepted: dict[str, str]
) -> Comparison:
    result = Comparison()
    for test, before in sorted(stock["tests"].items()):
        if before["outcome"] not in PASSING:
            continue
        after = mirrored["tests"].get(test)
        if after is None:
            diff = Difference(test, "not run", _suite_error(test, mirrored["suite_errors"]))
        elif after["outcome"] in PASSING:
            continue
        else:
            messages = after["messages"]
            diff = Difference(test, after["outcome"], messages[0] if messages else "")
            if after["outcome"] == "failed" and all(QUERY_COUNT.match(m) for m in messages):
                result.query_counts.append(diff)
                continue
        if test in accepted:
            result.accepted.append((diff, accepted[test]))
        else:
            result.regressions.append(diff)
    return result


def passed(run: dict[str, Any]) -> int:
    return sum(1 for t in run["tests"].values() if t["outcome"] in PASSING)
