"""`python -m missiwae`: the same command line as the `missiwae` script."""

from missiwae.cli import main

raise SystemExit(main())
