"""<qrun home>/tune-points.jsonl: every grid point `qrun tune` measures, on disk as soon as it is measured.

A tune takes minutes to hours; the profile is written only at its end. So each measurement (or failure) of a point
is appended as one JSON line, flushed and fsynced, next to the profile: a tune that is interrupted, killed or fails
loses nothing, and the next `qrun tune` reuses the measurements of the interrupted one where they still apply (same
machine, same workloads and context, same GGUF file by name, size and mtime, same settings and repetition).

Lines (each has "event", "tune_id", "time_unix"):
  start:    {"machine": profile.machine_key(), "workloads", "n_ctx"}
  point:    {"model", "gguf", "gguf_size_bytes", "gguf_mtime_ns", "settings", "rep", "result" | null, "failure" | null}
  finished: {} once the profile is written.
Only the last tune's lines are ever reused, and only if it did not finish; older lines are kept as a record.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from qrun.errors import BenchError
from qrun.runner import profile as profile_mod

FILE_NAME = "tune-points.jsonl"

Key = tuple[str, str, int]  # (model, json of the settings, repetition index)


def log_path() -> Path:
    return profile_mod.profile_path().with_name(FILE_NAME)


def _file_id(gguf: Path) -> dict:
    st = gguf.stat()
    return {"gguf": gguf.name, "gguf_size_bytes": st.st_size, "gguf_mtime_ns": st.st_mtime_ns}


def _settings_key(settings: dict) -> str:
    return json.dumps(settings, sort_keys=True)


def read_lines(path: Path) -> list[dict]:
    """The log's lines; unreadable or torn ones (a process killed mid-write) are skipped."""
    try:
        data = path.read_bytes()
    except OSError:  # absent, or its folder is not one: opening it for writing says why
        return []
    out = []
    for raw in data.splitlines():
        try:
            line = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(line, dict) and isinstance(line.get("event"), str):
            out.append(line)
    return out


def _unfinished(lines: list[dict], start: dict) -> dict[Key, dict]:
    """Point lines of the last tune, if it did not finish and measured what this one will (start's fields)."""
    starts = [i for i, line in enumerate(lines) if line["event"] == "start"]
    if not starts:
        return {}
    last = lines[starts[-1]]
    if any(last.get(k) != start[k] for k in ("machine", "workloads", "n_ctx")):
        return {}
    mine = [line for line in lines[starts[-1] :] if line.get("tune_id") == last.get("tune_id")]
    if any(line["event"] == "finished" for line in mine):
        return {}
    out: dict[Key, dict] = {}
    for line in mine:
        if (
            line["event"] == "point"
            and isinstance(line.get("model"), str)
            and isinstance(line.get("settings"), dict)
            and isinstance(line.get("rep"), int)
            and (isinstance(line.get("result"), dict) or isinstance(line.get("failure"), str))
        ):
            out[(line["model"], _settings_key(line["settings"]), line["rep"])] = line
    return out


class PointLog:
    """The open log of one `qrun tune`. Opening it is the check that the qrun home is writable (before measuring).

    Raises:
        BenchError: the qrun home or the log cannot be created or written.
    """

    def __init__(self, *, workloads: dict, n_ctx: int | None, path: Path | None = None):
        self.path = path or log_path()
        self.tune_id = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}"
        start = {
            "machine": profile_mod.machine_key(),
            "workloads": {k: list(v) for k, v in workloads.items()},
            "n_ctx": n_ctx,
        }
        self._earlier = _unfinished(read_lines(self.path), start)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "a", encoding="utf-8")
            self._write("start", **start)
            # the profile is written with qrun.fsutil's temp-file-and-rename: prove that works here too, now
            probe = self.path.with_name(f".{FILE_NAME}.{os.getpid()}.probe")
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise BenchError(
                f"cannot write to the qrun home {self.path.parent}: {err.strerror or err}",
                "make it writable, or point QRUN_HOME at a folder you can write to",
            ) from None

    def _write(self, event: str, **fields) -> None:
        record = {"event": event, "tune_id": self.tune_id, "time_unix": round(time.time(), 3), **fields}
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def earlier(self, model: str, gguf: Path, settings: dict, rep: int) -> tuple[dict | None, str | None] | None:
        """(result, failure) measured by the interrupted last tune for exactly this, else None."""
        line = self._earlier.get((model, _settings_key(settings), rep))
        if line is None or any(line.get(k) != v for k, v in _file_id(gguf).items()):
            return None
        return line.get("result"), line.get("failure")

    def point(self, model: str, gguf: Path, settings: dict, rep: int, result: dict | None, failure: str | None) -> None:
        self._write("point", model=model, **_file_id(gguf), settings=settings, rep=rep, result=result, failure=failure)

    def finished(self) -> None:
        self._write("finished")

    def close(self) -> None:
        self._f.close()

    @property
    def reusable(self) -> int:
        return len(self._earlier)
