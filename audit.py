"""`python audit.py data=<config> ...`: a shim for the `wbc-audit` console script (wbc/cli/audit.py),
so every README command works from a checkout."""

from wbc.cli.audit import main

if __name__ == "__main__":
    main()
