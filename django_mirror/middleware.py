"""The middleware's public path, as settings name it:
``MIDDLEWARE += ["django_mirror.middleware.ShadowReadMiddleware"]``."""

from django_mirror.shadow.middleware import ShadowReadMiddleware

__all__ = ["ShadowReadMiddleware"]
