"""``python -m django_suite``: run Django's tests stock and mirrored, compare, report.

Exit status: 0 no regression, 1 regressions, 2 a run did not complete.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from django_suite import compare, databases, sdist, selection, stream
from django_suite.outcomes import PASSING

ROOT = Path(__file__).resolve().parent.parent
RESULTS = sdist.CACHE / "results"
PHASES = {"capture": ("capture",), "mirror": ("mirror",), "both": ("capture", "mirror")}


class RunFailed(RuntimeError):
    """``runtests.py`` ended without writing its results."""


def run_tests(
    backend: str,
    phase: str,
    labels: list[str],
    parallel: int,
    verbose: bool,
    name: str = "",
) -> dict[str, Any]:
    """One ``runtests.py`` run of ``labels`` (modules or test ids), stock (``phase`` "")
    or with every model mirrored in ``phase``; its output goes to a log file beside its
    results."""
    tests = sdist.tests_dir()
    name = name or f"{backend}-{phase or 'stock'}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    results, log = RESULTS / f"{name}.json", RESULTS / f"{name}.log"
    results.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env.update(
        PYTHONPATH=str(ROOT),
        DJANGO_SUITE_BACKEND=backend,
        DJANGO_SUITE_PHASE=phase,
        DJANGO_SUITE_RESULTS=str(results),
    )
    command = [
        sys.executable,
        str(tests / "runtests.py"),
        "--settings=django_suite.settings",
        "--noinput",
        f"--parallel={parallel}",
        *labels,
    ]
    print(f"== {name}: {len(labels)} labels, --parallel={parallel}, log {log}", flush=True)
    started = time.monotonic()
    with log.open("w") as out:
        if phase:
            with stream.moto_stream() as endpoint:
                env["DJANGO_SUITE_STREAM_ENDPOINT"] = endpoint
                _run(command, tests, env, out, verbose)
                records = stream.records_on_stream(endpoint)
        else:
            _run(command, tests, env, out, verbose)
            records = 0
    if not results.exists():
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise RunFailed(f"{name}: runtests.py wrote no results; end of {log}:\n{tail}")
    data = json.loads(results.read_text())
    data["records_on_stream"] = records
    data["wall_seconds"] = round(time.monotonic() - started, 1)
    return data


def _run(command: list[str], cwd: Path, env: dict[str, str], out: Any, verbose: bool) -> None:
    if not verbose:
        subprocess.run(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        return
    with subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            out.write(line)
            sys.stdout.write(line)


def stock_labels(mirrored: dict[str, Any]) -> list[str]:
    """What to run stock after a mirrored run: every test that did not pass mirrored, and
    every class or module whose set-up failed (its tests never ran)."""
    labels = {test for test, t in mirrored["tests"].items() if t["outcome"] not in PASSING}
    for holder in mirrored["suite_errors"]:
        inner = holder[holder.find("(") + 1 : holder.rfind(")")] if "(" in holder else holder
        if inner:
            labels.add(inner)
    return sorted(labels)


def stock_run(
    backend: str, phase: str, mirrored: dict[str, Any], parallel: int, verbose: bool
) -> dict[str, Any]:
    """The tests that did not pass mirrored, run again stock: only those can be
    regressions, and running them alone takes seconds where the whole selection
    stock takes minutes."""
    labels = stock_labels(mirrored)
    if not labels:
        return {"tests": {}, "suite_errors": {}, "wall_seconds": 0.0}
    return run_tests(backend, "", labels, parallel, verbose, name=f"{backend}-{phase}-stock")


HEADERS = (
    "backend",
    "phase",
    "tests",
    "mirrored passed",
    "run stock",
    "passed stock",
    "regressions",
    "accepted",
    "query-count only",
    "events captured",
    "stream records",
    "shadow reads",
    "read mismatches",
    "live writes",
    "mirrored s",
    "stock s",
)


def table(rows: list[list[Any]]) -> str:
    """A plain-text table, each column as wide as its widest cell."""
    cells = [list(HEADERS), *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(HEADERS))]
    lines = [
        "  ".join(
            c.rjust(w) if i else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in cells
    ]
    return "\n".join(lines)


def report(
    backend: str, phase: str, stock: dict[str, Any], mirrored: dict[str, Any]
) -> compare.Comparison:
    result = compare.compare(stock, mirrored, compare.accepted_differences(backend))
    backend = f"{backend} ({phase})"
    for title, diffs in (
        ("regressions", result.regressions),
        ("query-count-only differences", result.query_counts),
    ):
        if diffs:
            print(f"\n{backend}: {len(diffs)} {title}")
        for diff in diffs:
            first = diff.message.strip().splitlines()[0] if diff.message.strip() else ""
            print(f"  {diff.test}  [{diff.outcome}]  {first[:160]}")
    for diff, reason in result.accepted:
        print(f"  accepted: {diff.test} [{diff.outcome}]: {reason}")
    refused = mirrored.get("refused_models", {})
    if refused:
        by_id: dict[str, int] = {}
        for ids in refused.values():
            for check_id in ids:
                by_id[check_id] = by_id.get(check_id, 0) + 1
        counts = ", ".join(f"{k} x{v}" for k, v in sorted(by_id.items()))
        print(f"\n{backend}: {len(refused)} models left unmirrored, refused by checks ({counts})")
    return result


def row(
    backend: str, phase: str, stock: dict[str, Any], mirrored: dict[str, Any], result: Any
) -> list[Any]:
    """One line of the table; shadow reads and live writes happen in phase mirror only."""
    counted = mirrored.get("counters", {})
    mirror = phase == "mirror"
    return [
        backend,
        phase,
        len(mirrored["tests"]),
        compare.passed(mirrored),
        len(stock["tests"]),
        compare.passed(stock),
        len(result.regressions),
        len(result.accepted),
        len(result.query_counts),
        mirrored["events"],
        mirrored["records_on_stream"],
        counted.get("read.compared", 0) if mirror else "-",
        counted.get("read.mismatch", 0) if mirror else "-",
        counted.get("write.applied", 0) if mirror else "-",
        mirrored["wall_seconds"],
        stock["wall_seconds"],
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m django_suite", description=__doc__)
    parser.add_argument("--backend", choices=[*databases.BACKENDS, "all"], default="all")
    parser.add_argument(
        "--phase",
        choices=list(PHASES),
        default="both",
        help="the phase every model is mirrored in; both: one run in each",
    )
    parser.add_argument("--parallel", type=int, default=2, help="runtests.py processes")
    parser.add_argument("--modules", nargs="+", help="Django test modules (default: selection)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show runtests.py output")
    args = parser.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log

    backends = databases.BACKENDS if args.backend == "all" else (args.backend,)
    rows: list[list[Any]] = []
    status = 0
    for backend in backends:
        if backend == "postgresql" and not databases.postgres_reachable():
            print(
                f"== postgresql: skipped, nothing answers on {databases.PG_HOST}:{databases.PG_PORT}"
            )
            continue
        modules = args.modules or selection.modules(backend)
        for phase in PHASES[args.phase]:
            try:
                mirrored = run_tests(backend, phase, modules, args.parallel, args.verbose)
                stock = stock_run(backend, phase, mirrored, args.parallel, args.verbose)
            except RunFailed as exc:
                print(exc)
                status = 2
                continue
            result = report(backend, phase, stock, mirrored)
            rows.append(row(backend, phase, stock, mirrored, result))
            if result.regressions:
                status = max(status, 1)
    if not rows:
        return status
    print()
    print(table(rows))
    print(
        "\nmirrored passed: tests passed mirrored; run stock / passed stock: the others, run "
        "again stock, and how many of them passed (regressions unless accepted); events: written to the outbox in the mirrored run "
        "(most rolled back with their test); records: put on the stream (committed writes); "
        "shadow reads: reads run again on the target and compared, mismatches: confirmed "
        "after re-checks; live writes: rows applied to the target at commit."
    )
    return status


if __name__ == "__main__":
    sys.exit(main())
