"""Settings (read lazily, typed) and the mirrored models' foreign-key graph; above
``core``, beside ``django_mirror.models``."""
