"""`python -m qrun`: the same command line as the `qrun` script."""

from qrun.cli import main

if __name__ == "__main__":
    # the name Click shows in usage lines and reads its completion variable by (_QRUN_COMPLETE), as for `qrun`
    main(prog_name="qrun")
