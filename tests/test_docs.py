"""What the docs show users to type is checked against the code: every Python block
parses, every block of settings passes the system checks (in the example project, whose
models the docs use), every ``manage.py mirror_*`` line parses with that command's own
argument parser, and every option of ``KinesisStream`` has its row in settings.md.

docs/targets.md's example target is taken from the page and run in test_target_api.py.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import shlex
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from django.core.management import get_commands, load_command_class
from django.core.management.base import CommandError

from django_mirror.core.aws import AwsClient
from django_mirror.streams import KinesisStream

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
EXAMPLE = ROOT / "example_project"

#: Names a settings block assigns that make it one to run through the system checks.
SETTINGS = re.compile(r"^(DJANGO_MIRROR|DATABASE_ROUTERS|MIDDLEWARE|STATSD_\w+)\b")
#: Commands the docs may run that are not django-mirror's (the example project's demo).
OTHER_COMMANDS = {"mirror_demo"}


def _blocks(language: str) -> list[tuple[str, str]]:
    """``(where, code)`` of every fenced block of ``language`` ("" for any)."""
    found = []
    for page in PAGES:
        text = page.read_text()
        # A block may be indented, inside a list item.
        for match in re.finditer(r"^( *)```(\w*)\n(.*?)^\1```", text, re.S | re.M):
            if not language or match.group(2) == language:
                line = text.count("\n", 0, match.start()) + 1
                code = textwrap.dedent(match.group(3))
                found.append((f"{page.relative_to(ROOT)}:{line}", code))
    return found


PYTHON = _blocks("python")
SETTINGS_BLOCKS = [
    (where, code)
    for where, code in PYTHON
    if any(SETTINGS.match(line) for line in code.splitlines())
]


def _parses(code: str) -> bool:
    """A module, the entries of a dict (a fragment such as ``"OPTIONS": {...},``), or
    an interactive session (its ``>>>`` and ``...`` lines)."""
    if code.startswith(">>> "):
        code = "\n".join(line[4:] for line in code.splitlines() if line[:4] in (">>> ", "... "))
    for source in (code, "{\n" + code + "\n}"):
        try:
            ast.parse(source)
            return True
        except SyntaxError:
            continue
    return False


@pytest.mark.parametrize(("where", "code"), PYTHON, ids=[w for w, _ in PYTHON])
def test_every_python_block_parses(where: str, code: str) -> None:
    assert _parses(code), f"{where} is not Python"


def test_the_settings_blocks_are_found() -> None:
    pages = {where.split(":")[0] for where, _ in SETTINGS_BLOCKS}
    assert {"docs/quickstart.md", "docs/settings.md", "docs/targets.md", "README.md"} <= pages


def _settings_module(code: str) -> str:
    """The example project's settings with the block applied over them, the ``mirror``
    cache alias docs/targets.md's CacheTarget names, and a database written ``{...}``
    (the reader's own settings) taken from the example project."""
    return (
        textwrap.dedent("""\
        from twitch.settings import *  # noqa: F403

        LOCAL = {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
        CACHES = {"default": LOCAL, "mirror": LOCAL}
        EXAMPLE_DATABASES = DATABASES

    """)
        + code
        + textwrap.dedent("""
        DATABASES = {
            alias: config if isinstance(config, dict) else EXAMPLE_DATABASES[alias]
            for alias, config in DATABASES.items()
        }
    """)
    )


def _check(where: str, code: str, folder: Path) -> tuple[str, int, str]:
    name = "docs_" + re.sub(r"\W", "_", where)
    (folder / f"{name}.py").write_text(_settings_module(code))
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "TARGET_DATABASE_URL")}
    env.update(PYTHONPATH=os.pathsep.join([str(folder), str(EXAMPLE), str(ROOT)]))
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--fail-level", "WARNING", "--settings", name],
        cwd=EXAMPLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return where, result.returncode, result.stdout + result.stderr


def test_every_settings_block_passes_the_system_checks(tmp_path: Path) -> None:
    """Run in the example project (its ``follows`` models are the docs' examples), the
    block applied over its settings; a warning fails too (``--fail-level WARNING``)."""
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda block: _check(*block, tmp_path), SETTINGS_BLOCKS))
    failed = [f"{where}:\n{output}" for where, code, output in results if code != 0]
    assert not failed, "\n".join(failed)


def test_a_wrong_setting_in_a_block_would_fail(tmp_path: Path) -> None:
    """The check above can fail: a model that does not exist is refused."""
    where, code, output = _check(
        "wrong", 'DJANGO_MIRROR["MODELS"] = {"follows.Nope": {"target": "new"}}', tmp_path
    )
    assert code != 0 and "django_mirror.E" in output


# --- command lines ---------------------------------------------------------------------

#: ``[python] [path/]manage.py mirror_x args``, at a line's start, after a ``$`` prompt
#: or after ``&&``.
COMMAND_LINE = re.compile(
    r"(?:^|&&|^\$)\s*(?:python3?\s+)?(?:\S*/)?manage\.py\s+(mirror_\w+)([^&]*)", re.M
)
#: Inline code in prose naming a command and its options: `mirror_verify --repair`.
INLINE = re.compile(r"`(?:python\s+)?(?:manage\.py\s+)?(mirror_\w+)(\s[^`]*)`")


def _command_lines() -> list[tuple[str, str, str, bool]]:
    """``(where, command, arguments, whole)``: ``whole`` when the arguments are a real
    command line (parsed as given) rather than a synopsis or prose (options checked)."""
    found = []
    for where, code in _blocks(""):
        for line in code.replace("\\\n", " ").splitlines():
            line = line.strip()
            if not re.match(r"(\$\s+)?(python3?\s+)?(\S*/)?manage\.py\s+mirror_", line):
                continue  # output, an error message, a diagram
            for match in COMMAND_LINE.finditer(line.removeprefix("$").strip()):
                arguments = match.group(2)
                synopsis = "[" in arguments
                found.append((where, match.group(1), arguments, not synopsis))
    for page in PAGES:
        prose = re.sub(r"^( *)```.*?^\1```", "", page.read_text(), flags=re.S | re.M)
        for match in INLINE.finditer(prose):
            found.append((str(page.relative_to(ROOT)), match.group(1), match.group(2), False))
    return found


COMMAND_LINES = _command_lines()


def _parser(command: str):  # type: ignore[no-untyped-def]
    app = get_commands()[command]
    return load_command_class(app, command).create_parser("manage.py", command)


def test_the_command_lines_are_found() -> None:
    commands = {command for _, command, _, whole in COMMAND_LINES if whole}
    assert {"mirror_setup", "mirror_relay", "mirror_replay", "mirror_copy"} <= commands
    assert {"mirror_verify", "mirror_status", "mirror_phase"} <= commands


@pytest.mark.parametrize(
    ("where", "command", "arguments", "whole"),
    COMMAND_LINES,
    ids=[f"{w}:{c}{a}" for w, c, a, _ in COMMAND_LINES],
)
def test_every_command_line_parses(where: str, command: str, arguments: str, whole: bool) -> None:
    if command in OTHER_COMMANDS:
        return
    assert command in get_commands(), f"{where}: no command {command}"
    parser = _parser(command)
    if whole:
        try:
            parser.parse_args(shlex.split(arguments, comments=True))
        except CommandError as exc:
            pytest.fail(f"{where}: manage.py {command}{arguments}: {exc}")
    else:
        known = {option for action in parser._actions for option in action.option_strings}
        for option in re.findall(r"(?<![\w-])--?[a-z][\w-]*", arguments):
            assert option in known, f"{where}: {command} has no option {option}"


def test_a_wrong_option_would_fail() -> None:
    with pytest.raises(CommandError):
        _parser("mirror_verify").parse_args(["--repairs"])


# --- KinesisStream's options -----------------------------------------------------------


def test_every_kinesis_stream_option_is_documented() -> None:
    """Every keyword ``STREAM["OPTIONS"]`` may hold (check E026 takes the same set: the
    stream's parameters and the AWS client's it passes on) has its row in settings.md."""
    text = (ROOT / "docs" / "settings.md").read_text()
    table = text.split("### `KinesisStream` options", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(\w+)` \|", table, re.M))
    parameters = {
        name
        for function, skip in ((KinesisStream.__init__, "client_options"), (AwsClient.__init__, ""))
        for name, parameter in inspect.signature(function).parameters.items()
        if name not in ("self", "service", skip)
        and parameter.kind is parameter.POSITIONAL_OR_KEYWORD
    }
    assert parameters - documented == set(), "undocumented"
    assert documented - parameters == set(), "documented, but no such option"
