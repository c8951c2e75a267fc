"""``python -m harness`` is the ``segheads`` command."""

from harness.cli import main

raise SystemExit(main())
