"""`python train.py ...`: a shim for the `wbc-train` console script (wbc/cli/train.py), so every
README command works from a checkout."""

from wbc.cli.train import main

if __name__ == "__main__":
    main()
