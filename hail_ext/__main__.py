"""`python -m hail_ext train ...` is `hail train ...`."""

from hail_ext.cli import main

raise SystemExit(main())
