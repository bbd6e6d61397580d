"""qrun.child with real child processes: exit codes and signals in words, timeouts, stderr as it is written,
stop() of a child that ignores SIGINT, and a child that dies with its SIGKILLed parent."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from qrun import child

# Each test writes its child's module into tmp_path and runs it from there (`python -m` finds it in the cwd).
EXIT_WITH = """
import json, os, sys
print(json.dumps({"argv": sys.argv[1:], "stdin": sys.stdin.read(), "no_backtrace": os.environ.get("GGML_NO_BACKTRACE"),
                  "parent": os.environ.get("QRUN_PARENT_PID"), "extra": os.environ.get("QRUN_TEST_EXTRA")}))
print("last words", file=sys.stderr)
sys.exit(int(sys.argv[1]))
"""
KILL_SELF = """
import os, resource, signal, sys
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file from SIGILL
print("about to die", file=sys.stderr, flush=True)
os.kill(os.getpid(), getattr(signal, sys.argv[1]))
"""
SLEEP = """
import signal, sys, time
if sys.argv[1:] == ["ignore-sigint"]:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
print("started", flush=True)
print("ready", file=sys.stderr, flush=True)
time.sleep(120)
"""
TALK = """
import sys
print("one", file=sys.stderr, flush=True)
sys.stdin.readline()  # the test answers only after it has seen "one"
print("two", file=sys.stderr, flush=True)
"""


def _module(folder: Path, name: str, source: str) -> str:
    (folder / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    return name


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("code", [0, 3])
def test_run_reports_the_exit_code_output_and_environment(tmp_path, code):
    name = _module(tmp_path, "exit_with", EXIT_WITH)
    done = child.run(name, [code, "a b"], timeout_s=60, input="hello", env_extra={"QRUN_TEST_EXTRA": "x"}, cwd=tmp_path)
    assert (done.returncode, done.signal_name, done.timed_out) == (code, None, False)
    got = json.loads(done.stdout)
    assert got == {
        "argv": [str(code), "a b"],
        "stdin": "hello",
        "no_backtrace": "1",
        "parent": str(os.getpid()),
        "extra": "x",
    }
    assert done.stderr == "last words\n"
    assert child.describe_exit(code) == (None if code == 0 else "exited with code 3")
    if code:
        with pytest.raises(subprocess.CalledProcessError):
            done.check()
    else:
        assert done.check() is done


@pytest.mark.parametrize(
    "sig, words",
    [
        ("SIGILL", "died of SIGILL"),
        ("SIGKILL", "died of SIGKILL — killed by SIGKILL, e.g. the kernel's out-of-memory killer"),
    ],
)
def test_a_child_killed_by_a_signal_is_named(tmp_path, sig, words):
    name = _module(tmp_path, "kill_self", KILL_SELF)
    done = child.run(name, [sig], timeout_s=60, cwd=tmp_path)
    assert done.returncode == -getattr(signal, sig) and done.signal_name == sig and not done.timed_out
    assert child.describe_exit(done.returncode) == words
    assert "about to die" in done.stderr
    assert child.signal_name(-77) == "signal 77" and child.signal_name(1) is None


def test_run_kills_a_child_at_its_timeout_and_keeps_what_it_wrote(tmp_path):
    name = _module(tmp_path, "sleeper", SLEEP)
    t0 = time.monotonic()
    done = child.run(name, [], timeout_s=1.0, cwd=tmp_path)
    assert time.monotonic() - t0 < 30
    assert done.timed_out and done.returncode == -signal.SIGKILL and done.signal_name == "SIGKILL"
    assert done.stdout == "started\n" and done.stderr == "ready\n"
    with pytest.raises(subprocess.TimeoutExpired):
        done.check()


def test_stderr_lines_arrive_while_the_child_runs(tmp_path):
    name = _module(tmp_path, "talk", TALK)
    lines: queue.Queue[str] = queue.Queue()
    started = child.start(name, [], stdin=subprocess.PIPE, on_stderr_line=lines.put, cwd=tmp_path)
    assert lines.get(timeout=30) == "one"  # before the child can end: it waits for our answer
    assert started.returncode is None
    started.proc.stdin.write("go\n")
    started.proc.stdin.close()
    assert started.wait() == 0
    assert lines.get(timeout=5) == "two" and list(started.tail) == ["one", "two"]


def _start_when_ready(tmp_path: Path, *args: str) -> child.Child:
    ready: queue.Queue[str] = queue.Queue()
    started = child.start(_module(tmp_path, "sleeper", SLEEP), args, on_stderr_line=ready.put, cwd=tmp_path)
    assert ready.get(timeout=30) == "ready"  # its SIGINT handler is set by now
    return started


def test_stop_kills_a_child_that_ignores_sigint_after_the_grace(tmp_path):
    started = _start_when_ready(tmp_path, "ignore-sigint")
    t0 = time.monotonic()
    assert started.stop(grace_s=1.0) == -signal.SIGKILL
    assert 1.0 <= time.monotonic() - t0 < 30


def test_stop_interrupts_a_child_even_when_started_with_sigint_ignored(tmp_path):
    # `qrun bench &` runs with SIGINT ignored and would hand that down: the child gets Python's handler back, so
    # stop()'s SIGINT ends it (KeyboardInterrupt) well within the grace
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        started = _start_when_ready(tmp_path)
    finally:
        signal.signal(signal.SIGINT, previous)
    t0 = time.monotonic()
    assert started.stop(grace_s=30.0) == -signal.SIGINT  # Python ends an uncaught KeyboardInterrupt that way
    assert time.monotonic() - t0 < 10
    assert any("KeyboardInterrupt" in line for line in started.tail)


def test_a_child_dies_with_its_sigkilled_parent(tmp_path):
    name = _module(tmp_path, "sleeper", SLEEP)
    parent_code = (
        f"import sys, time; from qrun import child; c = child.start({name!r}, cwd={str(tmp_path)!r}); "
        "print(c.pid, flush=True); time.sleep(120)"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True)
    pid = int(parent.stdout.readline())
    try:
        time.sleep(1.5)  # past the child's start, where it ties itself to its parent
        assert psutil.pid_exists(pid)
        parent.kill()
        parent.wait(timeout=10)
        assert _gone_within(pid, 5), "the child outlived its SIGKILLed parent by 5 s"
    finally:
        if psutil.pid_exists(pid):
            psutil.Process(pid).kill()
