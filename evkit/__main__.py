"""``python -m evkit``: the same as the ``evkit`` command."""

from __future__ import annotations

from evkit.cli import main

raise SystemExit(main())
