"""Child processes that die with their parent, and folders a live process owns.

A worker started by `qrun bench` or `qrun tune` is useless once its parent is gone: nobody reads its results, and a
7B model keeps gigabytes and every core busy. On Linux the kernel kills it when the parent dies
(prctl(PR_SET_PDEATHSIG), see prctl(2)); a thread that polls os.getppid() does the same where prctl is missing or
fails. The parent's pid travels in PARENT_PID_ENV, so a parent that died before the child started is noticed too.

An output folder is owned with an advisory lock (flock(2)) on a file in it that also records the owner's pid: the
kernel drops the lock when the owner dies, however it dies, so "no live owner" is exactly "the lock is free".
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from qrun.errors import UsageError

PARENT_PID_ENV = "QRUN_PARENT_PID"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_POLL_S = 0.5


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a child that should call tie_to_parent(): os.environ (or env) plus this pid."""
    return {**(os.environ if env is None else env), PARENT_PID_ENV: str(os.getpid())}


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)  # measurements are already on disk line by line: nothing to flush


def _set_pdeathsig() -> bool:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return bool(libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0)
    except (OSError, AttributeError):  # not Linux, or no prctl: the polling thread alone does the job
        return False


def tie_to_parent(*, use_prctl: bool = True) -> None:
    """Kill this process (SIGKILL) as soon as its parent exits. Call first thing in a worker's main().

    The parent is PARENT_PID_ENV when set (child_env() sets it), else the current parent.
    """
    expected = os.environ.get(PARENT_PID_ENV, "").strip()
    parent = int(expected) if expected.isdecimal() else os.getppid()
    if use_prctl:
        _set_pdeathsig()
    if os.getppid() != parent:  # the parent died before prctl took effect
        _die()

    def watch() -> None:
        while True:
            time.sleep(_POLL_S)
            if os.getppid() != parent:
                _die()

    threading.Thread(target=watch, name="qrun-parent-watch", daemon=True).start()


def _owner_pid(lock_path: Path) -> str:
    try:
        return lock_path.read_text(encoding="utf-8").strip() or "?"
    except OSError:
        return "?"


@contextlib.contextmanager
def owned_folder(folder: Path, *, what: str, lock_name: str = ".qrun.lock") -> Iterator[Path]:
    """Hold folder for this process while the block runs (the folder must exist).

    Raises:
        UsageError: a live process holds it (names that pid), before anything in the folder is touched.
    """
    lock_path = folder / lock_name
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise UsageError(
            f"cannot write to {folder}: {err.strerror or err}", "give --out a folder you can write to"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(
                f"{folder} is in use by another {what} (pid {_owner_pid(lock_path)})",
                "wait for it to finish, or give --out NEW_DIR",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield folder
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock; the file stays (deleting it would race with a run that just opened it)
