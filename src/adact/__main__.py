"""``python -m adact``: the same as the ``adact`` command."""

from adact.cli import main

raise SystemExit(main())
