"""`python -m captioner ...` is the `captioner` command."""

from captioner.app.cli import main

raise SystemExit(main())
