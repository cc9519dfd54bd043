from django.apps import AppConfig


class DjangoMirrorConfig(AppConfig):
    name = "django_mirror"
    verbose_name = "Data mirroring"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django_mirror import capture, checks, runtime  # noqa: F401  (registers the checks)

        capture.connect_signals()
        runtime.start()
