"""`python -m qrun`: the same command line as the `qrun` script."""

from qrun.cli import main

if __name__ == "__main__":
    main()
