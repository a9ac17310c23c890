"""`python predict.py ...`: a shim for the `wbc-predict` console script (wbc/cli/predict.py), so every
README command works from a checkout."""

from wbc.cli.predict import main

if __name__ == "__main__":
    main()
