from typing import Any

from django.apps import AppConfig


class DjangoMirrorConfig(AppConfig):
    name = "django_mirror"
    verbose_name = "Data mirroring"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django_mirror import capture, checks, live, outbox, relay, runtime  # noqa: F401

        capture.connect_signals()
        # Lower layers announce, higher ones listen: a committed capture starts the
        # relay, a batch of a model mirrored live joins its transaction's live apply.
        _subscribe(capture.committed_hooks, relay.after_commit)
        _subscribe(outbox.live_batch_hooks, live.apply_after_commit)
        runtime.start()


def _subscribe(hooks: list[Any], hook: Any) -> None:
    if hook not in hooks:
        hooks.append(hook)
