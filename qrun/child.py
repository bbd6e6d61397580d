"""Fresh processes that measure: one way to start a child, stop it, and say how it ended.

qrun measures in a fresh process wherever memory, llama.cpp state or a crash must stay out of the caller: a bench
worker per model and settings (qrun.bench.run), a tune grid point (qrun.bench.tune), the repacking probe
(qrun.runner.cpu_probe) and the perf tools (tools/perf/). Every such child is `python -m MODULE ARGS...` started
through this module (`python -m qrun.child MODULE ARGS...`, see _main), so that before MODULE runs it:
- is tied to its parent (qrun.lifeline.tie_to_parent): a child whose parent died measures for nobody while holding
  gigabytes and every core, so it dies too, however the parent died;
- has Python's own SIGINT handler: a shell starts a background job (`cmd &`) with SIGINT ignored and an ignored
  signal stays ignored across exec (signal(7)), so Child.stop()'s SIGINT would otherwise be lost;
- has GGML_NO_BACKTRACE=1: a llama.cpp abort prints its one message, not a debugger session (ggml/src/ggml.c,
  ggml_print_backtrace).

How a child ended is its return code; describe_exit() turns one into words (a negative code is the signal that
killed it, subprocess.Popen.returncode).

The kernel's half of the tie (prctl PR_SET_PDEATHSIG) fires when the *thread* that started the child ends: start
children from a thread that outlives them (the main thread).
"""

from __future__ import annotations

import collections
import os
import runpy
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO

from qrun import lifeline

TAIL_LINES = 40  # stderr lines a started child keeps for describing its failure
_OOM_NOTE = " — killed by SIGKILL, e.g. the kernel's out-of-memory killer"


def command(module: str, args: Sequence[str] = ()) -> list[str]:
    """The command line that runs `python -m module args...` through this module (see the module docstring)."""
    return [sys.executable, "-m", "qrun.child", module, *map(str, args)]


def child_environment(env_extra: dict[str, str] | None = None) -> dict[str, str]:
    """os.environ plus GGML_NO_BACKTRACE=1, env_extra, and this pid for the child's tie to it."""
    return lifeline.child_env({**os.environ, "GGML_NO_BACKTRACE": "1", **(env_extra or {})})


def signal_name(returncode: int) -> str | None:
    """ "SIGILL" for a child killed by SIGILL (returncode -4), "signal N" for a signal without a name, else None."""
    if returncode >= 0:
        return None
    number = -returncode
    return signal.Signals(number).name if number in signal.Signals._value2member_map_ else f"signal {number}"


def describe_exit(returncode: int) -> str | None:
    """How a child ended, in words: "exited with code 3", "died of SIGILL", ...; None for a clean exit (0)."""
    if returncode == 0:
        return None
    if returncode > 0:
        return f"exited with code {returncode}"
    oom = _OOM_NOTE if -returncode == signal.SIGKILL else ""
    return f"died of {signal_name(returncode)}{oom}"


@dataclass(frozen=True)
class Finished:
    """A child that ran to its end (or was killed at its timeout) and what it wrote."""

    returncode: int
    signal_name: str | None  # the signal that killed it (see signal_name()), None if it exited
    stdout: str
    stderr: str
    timed_out: bool  # killed (SIGKILL) because it outlived its timeout
    command: tuple[str, ...] = ()  # its command line (command())
    timeout_s: float | None = None

    def check(self) -> Finished:
        """self if the child exited with 0; else subprocess.TimeoutExpired / CalledProcessError, as
        subprocess.run(check=True, timeout=...) raises them."""
        if self.timed_out:
            raise subprocess.TimeoutExpired(list(self.command), self.timeout_s or 0, self.stdout, self.stderr)
        if self.returncode != 0:
            raise subprocess.CalledProcessError(self.returncode, list(self.command), self.stdout, self.stderr)
        return self


def run(
    module: str,
    args: Sequence[str] = (),
    *,
    timeout_s: float | None,
    input: str | None = None,
    env_extra: dict[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> Finished:
    """Run `python -m module args...` to its end, its stdout and stderr captured as text.

    timeout_s: kill it (SIGKILL) after this long, returning timed_out=True; None waits as long as it runs.
    input: text for its stdin (else stdin is empty).
    An exception here (Ctrl-C) kills the child before it propagates.
    """
    cmd = command(module, args)
    with subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        errors="replace",
        env=child_environment(env_extra),
        cwd=cwd,
    ) as proc:
        timed_out = False
        try:
            try:
                stdout, stderr = proc.communicate(input, timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                proc.kill()
                stdout, stderr = proc.communicate()  # what it wrote before it was killed
        except BaseException:
            proc.kill()  # Popen.__exit__ reaps it
            raise
    return Finished(proc.returncode, signal_name(proc.returncode), stdout, stderr, timed_out, tuple(cmd), timeout_s)


class Child:
    """A started child (start()): its stderr is read line by line on a thread, the last TAIL_LINES kept."""

    def __init__(self, proc: subprocess.Popen[str], on_stderr_line: Callable[[str], None] | None):
        self.proc = proc
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._on_line = on_stderr_line
        self._reader = threading.Thread(target=self._read, name=f"qrun-child-{proc.pid}-stderr", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        """None while it runs."""
        return self.proc.poll()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            line = line.rstrip("\n")
            self.tail.append(line)
            if self._on_line is not None:
                self._on_line(line)

    def wait(self) -> int:
        """Wait for it to end -> its return code (its stderr read to the end, or for at most 5 s more)."""
        code = self.proc.wait()
        self._reader.join(timeout=5)
        return code

    def stop(self, grace_s: float = 10.0) -> int:
        """Ask it to stop (SIGINT, as Ctrl-C would), kill it (SIGKILL) if it has not ended after grace_s -> its
        return code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.wait()


def start(
    module: str,
    args: Sequence[str] = (),
    *,
    env_extra: dict[str, str] | None = None,
    stdin: int | IO[str] | None = subprocess.DEVNULL,
    on_stderr_line: Callable[[str], None] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> Child:
    """Start `python -m module args...` and return at once; its stdout is discarded, its stderr streamed to
    on_stderr_line (on a reader thread, one line at a time without its newline) and kept in Child.tail."""
    proc = subprocess.Popen(
        command(module, args),
        stdin=stdin,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        errors="replace",
        env=child_environment(env_extra),
        cwd=cwd,
    )
    return Child(proc, on_stderr_line)


def _main() -> None:
    """`python -m qrun.child MODULE ARGS...`: the child's side (see the module docstring), then MODULE as __main__."""
    if len(sys.argv) < 2:
        print("usage: python -m qrun.child MODULE [ARGS...]", file=sys.stderr)
        sys.exit(2)
    lifeline.tie_to_parent()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    module = sys.argv[1]
    del sys.argv[1]  # MODULE sees the argv `python -m MODULE ARGS...` gives it (run_module sets argv[0])
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    _main()
