"""One function of the perf tooling run in a fresh process, its JSON-able arguments and result passed as JSON.

tools/perf/realscale.py measures each checkpoint write, conversion and load in a process of its own: its wall time
and peak memory are its alone, and llama.cpp state does not leak from one measurement into the next. The child is
`python -m tools.perf.fresh_call MODULE FUNCTION ARGS_JSON`, started through qrun.child (so it dies with its
parent). The result is the one line the child writes to its stdout: everything the function itself prints, from
Python or from C, goes to stderr. A QrunError in the child is printed as its one `Error: ...` line (exit code 3)
and raised again in the parent with that text, as `python -m tools.perf.realscale` reports it.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

from qrun import child
from qrun.errors import QrunError

_CHECKOUT = Path(__file__).resolve().parents[2]  # the child imports tools.perf from the checkout, as its parent did
_QRUN_ERROR_EXIT = 3
_ERROR_PREFIX = "Error: "


def call(fn, *args, timeout_s: float | None = None):
    """fn(*args) in a fresh process -> its result (JSON types: a tuple comes back as a list).

    Raises:
        QrunError: fn raised one (its one-line text).
        RuntimeError: the child failed otherwise (crashed, killed, timed out); names how, with its last stderr line.
    """
    path = os.pathsep.join(p for p in (str(_CHECKOUT), os.environ.get("PYTHONPATH")) if p)
    done = child.run(
        "tools.perf.fresh_call",
        [fn.__module__, fn.__name__, json.dumps(args)],
        timeout_s=timeout_s,
        env_extra={"PYTHONPATH": path},
    )
    if done.returncode == 0 and not done.timed_out:
        return json.loads(done.stdout)
    last = ([line.strip() for line in done.stderr.splitlines() if line.strip()] or [""])[-1]
    if done.returncode == _QRUN_ERROR_EXIT and last.startswith(_ERROR_PREFIX):
        raise QrunError(last[len(_ERROR_PREFIX) :])
    how = f"timed out after {timeout_s} s" if done.timed_out else child.describe_exit(done.returncode)
    raise RuntimeError(f"{fn.__module__}.{fn.__name__} in a fresh process {how}: {last}")


def main(argv: list[str]) -> int:
    module, name, args_json = argv
    result_out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # from here on, fd 1 (Python's sys.stdout and C's stdout alike) is stderr
    try:
        result = getattr(importlib.import_module(module), name)(*json.loads(args_json))
    except QrunError as err:
        print(f"{_ERROR_PREFIX}{err.one_line()}", file=sys.stderr, flush=True)
        return _QRUN_ERROR_EXIT
    sys.stdout.flush()
    result_out.write(json.dumps(result) + "\n")
    result_out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
