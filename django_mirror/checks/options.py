"""How a dict of options, as written, is checked: no key outside the known ones, and
dotted paths that import."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from django.core.checks import Error
from django.utils.module_loading import import_string


def importable(path: Any) -> bool:
    """Whether a dotted path imports, so a typo is reported before the first use."""
    try:
        import_string(str(path))
    except ImportError:
        return False
    return True


def _did_you_mean(key: Any, known: Iterable[str]) -> str:
    """The hint for an unknown key: the nearest known one (case aside), then all of them."""
    known = list(known)
    by_case = {name.lower(): name for name in known}
    close = difflib.get_close_matches(str(key).lower(), by_case, n=1)
    listed = f"Known options: {', '.join(known)}."
    return f"Did you mean {by_case[close[0]]!r}? {listed}" if close else listed


def unknown_keys(where: str, given: Any, known: Iterable[str], check_id: str) -> list[Any]:
    """A settings dict with no key outside ``known``: a misspelt key would otherwise be
    ignored, and its default used without a word."""
    if given is None:
        return []
    if not isinstance(given, dict):
        return [Error(f"{where} must be a dict.", id="django_mirror.E001")]
    known = list(known)
    return [
        Error(f"{where} has unknown option {key!r}.", hint=_did_you_mean(key, known), id=check_id)
        for key in given
        if key not in known
    ]
