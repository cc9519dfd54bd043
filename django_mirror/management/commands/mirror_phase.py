"""``manage.py mirror_phase app.Model [phase]``: show or change a model's run-time phase."""

from __future__ import annotations

import getpass
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.db import DatabaseError

from django_mirror import conf, phases
from django_mirror.management.commands._base import MirrorCommand


class Command(MirrorCommand):
    help = (
        "Show a model's phase and what a move to each other phase needs, or move it "
        "(every process follows within seconds; no deploy)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("model", metavar="app_label.Model")
        parser.add_argument("phase", nargs="?", choices=conf.PHASES, help="The phase to move to.")
        parser.add_argument("--reason", default="", help="Why (kept with the change).")
        parser.add_argument(
            "--force",
            action="store_true",
            help="Move despite failed preconditions (needs --reason).",
        )
        parser.add_argument("--by", default="", help="Who moves it (default: the OS user).")
        parser.add_argument(
            "--dry-run", action="store_true", help="Only check the preconditions of the move."
        )
        self.add_json_argument(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        (config,) = self.resolve_models([options["model"]])
        targets = (
            [options["phase"]]
            if options["phase"]
            else [p for p in conf.PHASES if p != config.phase]
        )
        try:
            checks = {phase: phases.preconditions(config, phase) for phase in targets}
        except DatabaseError as exc:
            raise CommandError(f"cannot read django-mirror's tables: {exc}") from exc
        report: dict[str, Any] = {
            "model": config.label,
            "phase": config.phase,
            "generation": config.generation,
            "preconditions": {
                phase: [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in found]
                for phase, found in checks.items()
            },
        }
        if options["phase"] and not options["dry_run"]:
            try:
                state = phases.change_phase(
                    config.label,
                    options["phase"],
                    by=options["by"] or _os_user(),
                    reason=options["reason"],
                    force=options["force"],
                )
            except phases.PhaseRefused as exc:
                raise CommandError(f"{exc} (--force with a --reason overrides)") from exc
            except (ValueError, DatabaseError) as exc:
                raise CommandError(str(exc)) from exc
            report.update(phase=state.phase, generation=state.generation, forced=state.forced)
        if options["json"]:
            self.emit_json(report)
            return
        if options["verbosity"] < 1:
            return
        self.stdout.write(
            f"{config.label}: phase {report['phase']} (generation {report['generation']})"
        )
        for phase, found in checks.items():
            verdict = "ok" if all(c.ok for c in found) else "refused"
            if options["phase"] and not options["dry_run"]:
                continue
            self.stdout.write(f"  to {phase}: {verdict}")
            for check in found:
                mark = self.style.SUCCESS("ok ") if check.ok else self.style.ERROR("no ")
                self.stdout.write(f"    {mark} {check.name}: {check.detail}")
        if options["phase"] and not options["dry_run"]:
            self.stdout.write(
                self.style.SUCCESS(f"moved to {report['phase']}")
                + (" (forced)" if report.get("forced") else "")
            )


def _os_user() -> str:
    try:
        return f"{getpass.getuser()} (mirror_phase)"
    except Exception:  # no user database entry in some containers
        return "mirror_phase"
