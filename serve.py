"""`python serve.py ...`: a shim for the `wbc-serve` console script (wbc/cli/serve.py), so the README
command works from a checkout."""

from wbc.cli.serve import main

if __name__ == "__main__":
    main()
