"""`python -m csi_py` is the same as the `csi-py` command."""

from csi_py.cli import main

raise SystemExit(main())
