"""``manage.py mirror_phase app.Model [app.Model ...] [phase]``: show or change models'
run-time phase; ``--group`` takes each model's whole group (models tied by foreign keys
whose ``on_delete`` writes the other table), which must move together."""

from __future__ import annotations

import getpass
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.db import DatabaseError

from django_mirror.config import conf, graph
from django_mirror.management.commands._base import MirrorCommand
from django_mirror.phases import transitions


class Command(MirrorCommand):
    help = (
        "Show a model's phase and what a move to each other phase needs, or move it "
        "(every process follows within seconds; no deploy)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "args",
            nargs="+",
            metavar="app_label.Model [app_label.Model ...] [phase]",
            help=f"Models, then the phase to move them to ({', '.join(conf.PHASES)}).",
        )
        parser.add_argument(
            "--group",
            action="store_true",
            help="Take each model's whole group: the models a move must not split.",
        )
        parser.add_argument("--reason", default="", help="Why (kept with the change).")
        parser.add_argument(
            "--force",
            action="store_true",
            help="Move despite failed preconditions, a split group included (needs --reason).",
        )
        parser.add_argument("--by", default="", help="Who moves it (default: the OS user).")
        parser.add_argument(
            "--dry-run", action="store_true", help="Only check the preconditions of the move."
        )
        self.add_json_argument(parser)

    def handle(self, *args: str, **options: Any) -> None:
        labels = list(args)
        phase = labels.pop() if len(labels) > 1 and labels[-1] in conf.PHASES else None
        if not labels:
            raise CommandError("name at least one model (app_label.Model)")
        configs = self.resolve_models(labels)
        if options["group"]:
            members = dict.fromkeys(m for c in configs for m in graph.group_of(c.label).members)
            configs = self.resolve_models(list(members))
            if phase is not None:  # members there already stay as they are
                configs = [c for c in configs if c.phase != phase]
                if not configs:
                    self.stdout.write(f"{', '.join(members)}: in {phase} already")
                    return
        moving = [c.label for c in configs]
        try:
            checks = {
                c.label: {
                    to: transitions.preconditions(c, to, moving if phase else None)
                    for to in ([phase] if phase else [p for p in conf.PHASES if p != c.phase])
                }
                for c in configs
            }
        except DatabaseError as exc:
            raise CommandError(f"cannot read django-mirror's tables: {exc}") from exc
        reports: list[dict[str, Any]] = [
            {
                "model": c.label,
                "phase": c.phase,
                "generation": c.generation,
                "group": list(graph.group_of(c.label).members),
                "preconditions": {
                    to: [{"name": p.name, "ok": p.ok, "detail": p.detail} for p in found]
                    for to, found in checks[c.label].items()
                },
            }
            for c in configs
        ]
        moved = phase is not None and not options["dry_run"]
        if moved:
            assert phase is not None  # as ``moved`` says
            try:
                states = transitions.change_phases(
                    moving,
                    phase,
                    by=options["by"] or _os_user(),
                    reason=options["reason"],
                    force=options["force"],
                )
            except transitions.PhaseRefused as exc:
                raise CommandError(f"{exc} (--force with a --reason overrides)") from exc
            except (ValueError, LookupError, DatabaseError) as exc:
                raise CommandError(str(exc)) from exc
            for report, state in zip(reports, states, strict=True):
                report.update(phase=state.phase, generation=state.generation, forced=state.forced)
        if options["json"]:
            self.emit_json(reports[0] if len(reports) == 1 else {"models": reports})
            return
        if options["verbosity"] < 1:
            return
        for report in reports:
            self.stdout.write(
                f"{report['model']}: phase {report['phase']} (generation {report['generation']})"
            )
            if len(report["group"]) > 1 and options["verbosity"] > 1:
                self.stdout.write(f"  group: {', '.join(report['group'])}")
            if moved:
                continue
            for to, found in checks[report["model"]].items():
                verdict = "ok" if all(c.ok for c in found) else "refused"
                self.stdout.write(f"  to {to}: {verdict}")
                for check in found:
                    mark = self.style.SUCCESS("ok ") if check.ok else self.style.ERROR("no ")
                    self.stdout.write(f"    {mark} {check.name}: {check.detail}")
        if moved:
            forced = any(r.get("forced") for r in reports)
            self.stdout.write(
                self.style.SUCCESS(f"moved {', '.join(moving)} to {phase}")
                + (" (forced)" if forced else "")
            )


def _os_user() -> str:
    try:
        return f"{getpass.getuser()} (mirror_phase)"
    except Exception:  # no user database entry in some containers
        return "mirror_phase"
