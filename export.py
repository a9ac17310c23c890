"""`python export.py ...`: a shim for the `wbc-export` console script (wbc/cli/export.py), so every
README command works from a checkout."""

from wbc.cli.export import main

if __name__ == "__main__":
    main()
