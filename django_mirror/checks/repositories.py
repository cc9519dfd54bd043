"""One entry of ``DJANGO_MIRROR['REPOSITORIES']``: a ``@repository`` interface whose
implementations import and have its methods (E020-E022)."""

from __future__ import annotations

from typing import Any

from django.core.checks import Error
from django.utils.module_loading import import_string

REPOSITORY_OPTIONS = {"source", "targets", "phase", "shadow_read_rate"}


def repository_errors(path: str, opts: Any) -> list[Any]:
    """An interface tagged with @repository, implementations that import and have its
    methods, a known phase and a rate within 0..1."""
    from django_mirror.repositories.interface import spec_of
    from django_mirror.repositories.registry import PHASES as REPOSITORY_PHASES

    where = f"DJANGO_MIRROR['REPOSITORIES'][{path!r}]"

    def error(message: str, check_id: str = "django_mirror.E020") -> list[Any]:
        return [Error(f"{where}: {message}", hint="See docs/repositories.md.", id=check_id)]

    if not isinstance(opts, dict):
        return error("must be a dict")
    unknown = set(opts) - REPOSITORY_OPTIONS
    if unknown:
        return error(f"unknown options {sorted(unknown)}")
    try:
        spec = spec_of(import_string(path))
    except (ImportError, TypeError) as exc:
        return error(f"not a @repository interface ({exc})")
    errors: list[Any] = []
    if opts.get("phase", "capture") not in REPOSITORY_PHASES:
        errors += error(
            f"phase {opts.get('phase')!r} is none of {', '.join(REPOSITORY_PHASES)}",
            "django_mirror.E021",
        )
    rate = opts.get("shadow_read_rate", 0.0)
    if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0.0 <= rate <= 1.0:
        errors += error(f"shadow_read_rate {rate!r} is not within 0.0..1.0", "django_mirror.E021")
    targets = opts.get("targets") or {}
    if not isinstance(targets, dict):
        return errors + error("'targets' must map names to dotted paths", "django_mirror.E022")
    for role, implementation in [("source", opts.get("source")), *targets.items()]:
        try:
            cls = import_string(str(implementation))
        except ImportError as exc:
            errors += error(
                f"{role} {implementation!r} cannot be imported ({exc})", "django_mirror.E022"
            )
            continue
        missing = [m for m in spec.methods if not callable(getattr(cls, m, None))]
        if missing:
            errors += error(
                f"{role} {implementation!r} lacks {', '.join(sorted(missing))}",
                "django_mirror.E022",
            )
    return errors
