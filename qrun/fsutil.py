"""Atomic file writes and hashing: a reader never sees a half-written file under its final name."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

# `<final name>.<pid>-<8 hex>.partial`: unique per process and call, and it names the process that owns it.
_PARTIAL_OWNER = re.compile(r"\.(\d+)-[0-9a-f]{8}\.partial$")
# mkstemp temporaries of atomic_open: `.<final name>.<pid>.<random>.tmp`
_TMP_OWNER = re.compile(r"\.(\d+)\.[^.]+\.tmp$")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def partial_path(path: Path) -> Path:
    """A fresh name for work in progress on `path`, in the same folder (so the final rename is atomic).

    Unique per process and call (`<name>.<pid>-<random>.partial`): two runs writing the same output never write
    into, delete or rename each other's file, and a leftover names the process that made it (owner_pid).
    """
    return path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}.partial")


def owner_pid(path: Path) -> int | None:
    """The process id in a partial_path() or atomic_open() temporary's name; None for other names."""
    match = _PARTIAL_OWNER.search(path.name) or _TMP_OWNER.search(path.name)
    return int(match.group(1)) if match else None


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (ours included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def file_identity(path: str | os.PathLike) -> dict:
    """What identifies a file as written: size, mtime, inode and ctime.

    A user can restore a file's mtime after changing it (os.utime, `touch -r`), but not its ctime: the kernel sets
    that to the current time on every change, the utime call included. A copy gets a new inode and ctime too.
    """
    stat = os.stat(path)
    return {
        "size_bytes": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "inode": stat.st_ino,
        "ctime_ns": stat.st_ctime_ns,
    }


def ensure_writable_dir(path: str | os.PathLike, *, what: str, hint: str) -> Path:
    """Create `path` if needed and prove a file can be created in it (then removed).

    Raises:
        UsageError: `path` or a parent is a regular file, or the folder cannot be created or written
            (read-only file system, no permission, disk full), with `hint` as the fix.
    """
    from qrun.errors import UsageError

    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=f".qrun-write-test.{os.getpid()}.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except FileExistsError:
        raise UsageError(f"{what} {path} is a file, not a folder", hint) from None
    except NotADirectoryError:
        raise UsageError(f"{what} {path} is inside a file, not a folder", hint) from None
    except OSError as err:
        raise UsageError(f"cannot write in {what} {path}: {os_reason(err)}", hint) from None
    return path


def read_input_text(path: str | os.PathLike, *, encoding: str = "utf-8") -> str:
    """A text input file (suite, answers, results), read whole; a device is refused before reading.

    /dev/zero or /dev/urandom given as a file would be read until memory runs out. Pipes and FIFOs stay allowed
    (`qrun score <(...)`): they end when their writer does.

    Raises:
        OSError: unreadable, or a character or block device (EINVAL, "a device, not a file").
        UnicodeDecodeError: not text in `encoding`.
    """
    import stat

    if stat.S_ISCHR(os.stat(path).st_mode) or stat.S_ISBLK(os.stat(path).st_mode):
        raise OSError(errno.EINVAL, "a device, not a file", str(path))
    return Path(path).read_text(encoding=encoding)


def os_reason(err: OSError) -> str:
    """An OSError's reason without its Python decoration ("Read-only file system", "No space left on device")."""
    return err.strerror or errno.errorcode.get(err.errno or 0, str(err))


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary file next to `path`; on success fsync and rename it over `path`, on error delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode open() would have
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_json_atomic(path: str | os.PathLike, data) -> None:
    write_text_atomic(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def commit_file(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """fsync a finished temporary file and rename it to its final name."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 8 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
