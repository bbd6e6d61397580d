"""Wall time and memory of a step, measured the same way in convert, ask and bench.

Peak RSS alone misleads when weights are mmap'd (llama.cpp issues #864, #16761): the mapped file counts in RSS but
is page cache the kernel can drop. So memory is reported twice: peak RSS (everything resident) and peak anonymous
memory (RssAnon: what the process really allocated — e.g. llama.cpp's repacked weights, the KV cache).
"""

from __future__ import annotations

import resource
import threading
import time
from dataclasses import asdict, dataclass

import psutil

_SAMPLE_INTERVAL_S = 0.02


def _status_kib() -> dict[str, int]:
    """Fields of /proc/self/status in KiB (Linux); empty elsewhere."""
    fields = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if value.strip().endswith("kB"):
                    fields[key] = int(value.split()[0])
    except OSError:
        pass
    return fields


def rss_bytes() -> int:
    return psutil.Process().memory_info().rss


def anon_bytes() -> int:
    """Current anonymous (non-file-backed) resident memory of this process."""
    status = _status_kib()
    if "RssAnon" in status:
        return status["RssAnon"] * 1024
    return psutil.Process().memory_info().rss  # no split available: the conservative figure


def peak_rss_bytes_since_start() -> int:
    """The kernel's high-water mark of this process's RSS (VmHWM), since the process started."""
    status = _status_kib()
    if "VmHWM" in status:
        return status["VmHWM"] * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class StepStats:
    wall_s: float
    peak_rss_bytes: int
    peak_anon_bytes: int

    def to_dict(self) -> dict:
        return asdict(self)


class MemoryWatch:
    """Samples RSS and anonymous memory on a background thread while a `with` block runs.

    The kernel keeps only the peak RSS of the whole process (VmHWM), not of a step and not of anonymous memory, so
    this samples every 20 ms; a spike shorter than that can be missed, which is why the step's own end state is
    sampled too.
    """

    def __init__(self):
        self.peak_rss_bytes = 0
        self.peak_anon_bytes = 0
        self.wall_s = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0

    def sample(self) -> None:
        self.peak_rss_bytes = max(self.peak_rss_bytes, rss_bytes())
        self.peak_anon_bytes = max(self.peak_anon_bytes, anon_bytes())

    def _run(self) -> None:
        while not self._stop.wait(_SAMPLE_INTERVAL_S):
            self.sample()

    def __enter__(self) -> "MemoryWatch":
        self._t0 = time.perf_counter()
        self.sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.sample()
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.wall_s = time.perf_counter() - self._t0

    def stats(self) -> StepStats:
        return StepStats(self.wall_s, self.peak_rss_bytes, self.peak_anon_bytes)
