"""`python evaluate.py ...`: a shim for the `wbc-evaluate` console script (wbc/cli/evaluate.py), so every
README command works from a checkout."""

from wbc.cli.evaluate import main

if __name__ == "__main__":
    main()
