#!/usr/bin/env python
"""Django's command-line utility for the example "twitch" project."""

import os
import sys
from pathlib import Path


def main() -> None:
    # Run from a source checkout without installing django-mirror first.
    sys.path.insert(1, str(Path(__file__).resolve().parent.parent))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "twitch.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
