"""`python compare.py runs=[...] annotations=<csv>`: a shim for the `wbc-compare` console script
(wbc/cli/compare.py), so every README command works from a checkout."""

from wbc.cli.compare import main

if __name__ == "__main__":
    main()
