"""`python fit_morphology.py [data=...]`: a shim for the `wbc-fit-morphology` console script
(wbc/cli/fit_morphology.py), so every README command works from a checkout."""

from wbc.cli.fit_morphology import main

if __name__ == "__main__":
    main()
