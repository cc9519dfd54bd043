"""The app's wiring: when Django is ready, each layer's hooks get their listeners from
the layers above, and the background threads start (docs/architecture.md)."""

from typing import Any

from django.apps import AppConfig


class DjangoMirrorConfig(AppConfig):
    name = "django_mirror"
    verbose_name = "Data mirroring"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django_mirror import checks, runtime  # noqa: F401
        from django_mirror.capture import outbox, record, signals
        from django_mirror.live import apply
        from django_mirror.pipeline import relay, replay
        from django_mirror.repositories import calls

        signals.connect_signals()
        # Lower layers announce, higher ones listen: a committed capture starts the
        # relay, a batch of a model mirrored live joins its transaction's live apply,
        # and replay hands a repository call event to the repositories.
        _subscribe(record.committed_hooks, relay.after_commit)
        _subscribe(outbox.live_batch_hooks, apply.apply_after_commit)
        _subscribe(replay.call_dispatchers, calls.dispatch)
        runtime.start()


def _subscribe(hooks: list[Any], hook: Any) -> None:
    if hook not in hooks:
        hooks.append(hook)
