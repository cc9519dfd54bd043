"""Django's own test suite as a check of django-mirror.

Runs a selection of the test modules of the installed Django's source distribution
twice, stock and with every concrete model mirrored in phase ``capture``, and fails on
any test that passes stock but not mirrored. ``python -m django_suite --help``;
docs/django-suite.md explains the parts.
"""
