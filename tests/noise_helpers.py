"""CPU hogs for the noise tests: real busy-loop processes, bounded in time, killed by their own pids."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import psutil

# burns CPU until its deadline, whatever happens to the test that started it
_HOG = "import time, sys\nend = time.time() + float(sys.argv[1])\nwhile time.time() < end:\n    pass\n"


@contextlib.contextmanager
def cpu_hogs(n: int, seconds: float):
    """n busy-loop processes for at most `seconds`, detached from this process (a shell starts them in the
    background and exits), so the kernel reparents them: they are other processes to qrun's sampler, not children."""
    script = " ".join(f'"{sys.executable}" -c "$HOG" {seconds} </dev/null >/dev/null 2>&1 & echo $!;' for _ in range(n))
    out = subprocess.run(
        ["sh", "-c", script],
        env=dict(os.environ, HOG=_HOG),
        capture_output=True,
        text=True,
        check=True,
        stdin=subprocess.DEVNULL,
    )
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == n
    _wait_until_spinning(pids)
    try:
        yield pids
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _wait_until_spinning(pids: list[int], timeout_s: float = 30.0) -> None:
    """Until each hog has burnt 0.1 CPU-s: a Python start-up on a loaded machine can take most of a second."""
    deadline = time.monotonic() + timeout_s
    for pid in pids:
        while psutil.Process(pid).cpu_times().user < 0.1:
            assert time.monotonic() < deadline, f"CPU hog {pid} did not start spinning in {timeout_s} s"
            time.sleep(0.05)


def spin_cpu_s(cpu_s: float) -> None:
    """Use cpu_s seconds of this process's CPU time (however long that takes on a busy machine)."""
    end = time.process_time() + cpu_s
    while time.process_time() < end:
        pass
