"""Progress of long steps on stderr: a bar with percentage and ETA on a terminal, whole lines in a log.

On a terminal tqdm draws the bar (percentage, counts, elapsed<remaining, rate). When stderr is not a terminal tqdm
would still redraw its one line with a carriage return ten times a second, which a log file keeps as one endless
line; there a Bar prints whole lines instead, formatted by tqdm's own format_meter so both modes read alike: one
line per PLAIN_STEP_PERCENT of the total, or after PLAIN_EVERY_S seconds without one, and one at the end.

say() prints a line of text above the bars being drawn (tqdm.write), so step messages and worker output never cut
through a bar. plain_hub_bars() turns the tqdm bars other libraries draw on sys.stderr (the model hubs' download
bars) into the same whole lines when stderr is not a terminal.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO

from tqdm import tqdm

PLAIN_STEP_PERCENT = 10
PLAIN_EVERY_S = 30.0


def bar_format(unit: str, *, scaled: bool = False, known_total: bool = True, drawn: bool = False) -> str:
    """tqdm's bar_format for a Bar: the plain line is what the terminal bar says without the bar itself, e.g.
    "quantize:  41% 120/291 tensors [00:42<01:00, 2.85 tensors/s]" or "convert:  50% 34.5MB/69.0MB [...]"
    (elapsed<remaining: the ETA)."""
    unit = unit.replace("{", "{{").replace("}", "}}")
    if scaled:  # "34.5MB/69.0MB": the unit follows each scaled number
        counts = "{n_fmt}" + unit + ("/{total_fmt}" + unit if known_total else "")
    else:
        counts = "{n_fmt}" + ("/{total_fmt}" if known_total else "") + " " + unit
    if not known_total:
        return "{desc}: " + counts + " [{elapsed}, {rate_noinv_fmt}]"
    bar = "|{bar}|" if drawn else ""
    return "{desc}: {percentage:3.0f}%" + bar + " " + counts + " [{elapsed}<{remaining}, {rate_noinv_fmt}]"


_lock = threading.RLock()
_drawn: list[tqdm] = []  # bars being drawn on a terminal, which say() must write above


def is_terminal(stream: IO[str] | None) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # a closed or foreign stream
        return False


def _size_args(stream: IO[str]) -> dict:
    """tqdm's size arguments: follow the terminal's size, or a fixed one when it reports none (a pty nobody sized
    says 0 x 0, which tqdm takes as no room for a bar, and draws nothing)."""
    try:
        columns, lines = os.get_terminal_size(stream.fileno())
    except (AttributeError, ValueError, OSError, io.UnsupportedOperation):
        columns = lines = 0
    if columns > 0 and lines > 0:
        return {"dynamic_ncols": True}
    return {"ncols": columns or 100, "nrows": lines or 24}


def say(text: str, stream: IO[str] | None = None) -> None:
    """One line of text on stderr (or `stream`), above any bar being drawn there."""
    out = stream or sys.stderr
    with _lock:
        if any(bar.fp is out for bar in _drawn):
            tqdm.write(text, file=out)
        else:
            out.write(text + "\n")
        out.flush()


class Bar:
    """Counts `done` of `total` units of one step; a context manager (closing prints the last state in plain mode).

    Args:
        total: units the step will do (0 or less: unknown, shown as counts only).
        desc: the step's name, e.g. "quantize".
        unit: what is counted, e.g. "tensors"; unit_scale=True for bytes ("B": 1.2GB/3.4GB).
        stream: where to draw (default stderr); terminal: force a mode (default: whether stream is a terminal).
        clock: seconds, for the plain mode's timing (tests pass their own).
    """

    def __init__(
        self,
        total: int,
        desc: str,
        *,
        unit: str = "it",
        unit_scale: bool = False,
        stream: IO[str] | None = None,
        terminal: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.stream = stream or sys.stderr
        self.terminal = is_terminal(self.stream) if terminal is None else terminal
        self.total, self.desc, self.unit, self.unit_scale = max(int(total), 0), desc, unit, unit_scale
        self.n = 0
        self.lines = 0  # plain lines printed (tests read it)
        self._clock = clock
        self._started_s = self._last_line_s = clock()
        self._last_line_n: int | None = None
        self._closed = False
        self._tqdm: tqdm | None = None
        if self.terminal:
            self._tqdm = tqdm(
                total=self.total or None,
                desc=desc,
                unit=self._rate_unit(),
                unit_scale=unit_scale,
                file=self.stream,
                **_size_args(self.stream),
                mininterval=0.2,
                leave=True,
                bar_format=bar_format(unit, scaled=unit_scale, known_total=bool(self.total), drawn=True),
            )
            with _lock:
                _drawn.append(self._tqdm)

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        """`n` more units done."""
        self.advance_to(self.n + n)

    def advance_to(self, done: int) -> None:
        """`done` units done so far (never goes back)."""
        with _lock:
            if self._closed or done <= self.n:
                return
            step, self.n = done - self.n, done
            if self._tqdm is not None:
                self._tqdm.update(step)
            elif self._plain_line_due():
                self._plain_line()

    def set_total(self, total: int) -> None:
        """The step turned out to have `total` units (e.g. a bench run that failed and will answer no more)."""
        with _lock:
            self.total = max(int(total), self.n)
            if self._tqdm is not None:
                self._tqdm.total = self.total
                self._tqdm.refresh()
            elif self.total and self.n >= self.total and self._last_line_n != self.n:
                self._plain_line()

    def line(self) -> str:
        """The bar's state as one line of text (the plain mode's line)."""
        return tqdm.format_meter(
            self.n,
            self.total or None,
            self._clock() - self._started_s,
            prefix=self.desc,
            unit=self._rate_unit(),
            unit_scale=self.unit_scale,
            bar_format=bar_format(self.unit, scaled=self.unit_scale, known_total=bool(self.total)),
        )

    def _rate_unit(self) -> str:
        """tqdm's unit, used in its rate: "2.85 tensors/s", "1.20MB/s" (a scaled unit follows its prefix)."""
        return self.unit if self.unit_scale else f" {self.unit}"

    def close(self) -> None:
        with _lock:
            if self._closed:
                return
            self._closed = True
            if self._tqdm is not None:
                self._tqdm.close()
                _drawn.remove(self._tqdm)
            elif self._last_line_n != self.n and self.n:
                self._plain_line()

    def _plain_line_due(self) -> bool:
        if self.total and self.n >= self.total:
            return True
        if self._clock() - self._last_line_s >= PLAIN_EVERY_S:
            return True
        if not self.total:
            return False
        before = 0 if self._last_line_n is None else self._last_line_n
        return self.n * 100 // (self.total * PLAIN_STEP_PERCENT) > before * 100 // (self.total * PLAIN_STEP_PERCENT)

    def _plain_line(self) -> None:
        self.stream.write(self.line() + "\n")
        self.stream.flush()
        self.lines += 1
        self._last_line_s, self._last_line_n = self._clock(), self.n


Meter = Callable[..., Bar]  # Bar's signature: meter(total, desc, unit=..., unit_scale=...) -> Bar


class NoBar(Bar):
    """A Bar that counts and draws nothing (a caller that handles output itself)."""

    def __init__(self, total: int, desc: str, **_kwargs):
        super().__init__(total, desc, stream=io.StringIO(), terminal=False)

    def _plain_line(self) -> None:
        self._last_line_n = self.n


class StepBars:
    """A progress(step, **info) callback (qrun.convert.pipeline's) drawing one Bar per step.

    "convert" reports done_bytes/total_bytes (a bytes bar), other steps done/total with unit "tensors".
    """

    def __init__(self, meter: Meter = Bar):
        self.meter = meter
        self.bars: dict[str, Bar] = {}

    def __call__(self, step: str, **info) -> None:
        if "done_bytes" in info:
            done, total, unit, scale = info["done_bytes"], info["total_bytes"], "B", True
        else:
            done, total, unit, scale = info.get("done", 0), info.get("total", 0), info.get("unit", "tensors"), False
        bar = self.bars.get(step)
        if bar is None or bar._closed:
            bar = self.bars[step] = self.meter(total, step, unit=unit, unit_scale=scale)
        bar.advance_to(done)
        if total and done >= total:
            bar.close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_PERCENT = re.compile(r"(\d{1,3})%")


class _PlainBarLines(io.TextIOBase):
    """A text stream that turns tqdm's redrawn status lines into whole lines (see plain_hub_bars)."""

    def __init__(self, target: IO[str], clock: Callable[[], float] = time.monotonic):
        self.target, self._clock = target, clock
        self._pending = ""
        self._last: dict[str, tuple[int, float]] = {}  # bar description -> (last 10 % step printed, when)
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        with self._lock:
            self._pending += text
            parts = re.split(r"([\r\n])", self._pending)
            self._pending = parts.pop()  # no line end yet
            for segment, end in zip(parts[::2], parts[1::2], strict=True):
                self._segment(_ANSI.sub("", segment).strip(), final=end == "\n")
        return len(text)

    def flush(self) -> None:
        self.target.flush()

    def _segment(self, segment: str, *, final: bool) -> None:
        if not segment:
            return
        percent = _PERCENT.search(segment)
        if percent is None or "|" not in segment:  # not a bar: a message, kept as it is
            self.target.write(segment + "\n")
            return
        key = segment[: percent.start()].strip()
        step = int(percent.group(1)) // PLAIN_STEP_PERCENT
        now = self._clock()
        last_step, last_s = self._last.get(key, (-1, now))
        if final or step > last_step or now - last_s >= PLAIN_EVERY_S:
            self._last[key] = (step, now)
            self.target.write(segment + "\n")
            self.target.flush()


@contextlib.contextmanager
def plain_hub_bars() -> Iterator[None]:
    """While the block runs, tqdm bars drawn on sys.stderr become whole lines when stderr is not a terminal.

    For libraries that draw their own bars (the model hubs' download bars): on a terminal they are left alone.
    """
    if is_terminal(sys.stderr):
        yield
        return
    with contextlib.redirect_stderr(_PlainBarLines(sys.stderr)):
        yield
