"""Shadow reads: a sample of reads of mirrored models also runs on the other store, off
the request thread, and is compared and timed."""

from django_mirror.shadow.pool import get_pool
from django_mirror.shadow.scope import shadow_reads

__all__ = ["get_pool", "shadow_reads"]
