"""The router's public path, as settings name it:
``DATABASE_ROUTERS = ["django_mirror.router.MirrorRouter"]``."""

from django_mirror.phases.router import MirrorRouter

__all__ = ["MirrorRouter"]
