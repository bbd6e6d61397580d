"""Wall time and memory of a step, measured the same way in convert, ask and bench.

Peak RSS alone misleads when weights are mmap'd (llama.cpp issues #864, #16761): the mapped file counts in RSS but
is page cache the kernel can drop. So memory is reported twice: peak RSS (everything resident) and peak anonymous
memory (RssAnon: what the process really allocated — e.g. llama.cpp's repacked weights, the KV cache).
"""

from __future__ import annotations

import os
import resource
import statistics
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

    def __enter__(self) -> MemoryWatch:
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


# -- what else used the CPU during a measurement -------------------------------------------------------------------
# The load average alone cannot tell whether a sample was disturbed: it is smoothed over a minute and counts the
# measured process itself. So each sample also takes /proc/stat (all CPUs' busy and steal time, proc(5)) and this
# process tree's own CPU time at both ends of its window: other processes' CPU time = busy - own.
#
# THE NOISE RULE (one place; bench, tune and the real-scale tools all use noise_fields()): a sample is noisy when
# other processes used more than NOISY_OTHER_CPU_FRACTION of the window's CPU capacity (window seconds x logical
# CPUs), or the hypervisor stole more than NOISY_STEAL_FRACTION of it.
#  - 10% other: llama.cpp splits each matmul over its threads and waits for the slowest, so a neighbour taking even
#    part of one core stalls every thread of a threads = cores run; 10% of a 2-CPU window is a fifth of a core,
#    well above what an idle machine's kernel threads and qrun's own parent process use, and well below the
#    busy-loop neighbours that made 2-thread runs 10x slower than 1-thread runs.
#  - 5% steal: steal is CPU time a vCPU wanted and the host gave to another guest; it hits every thread alike and
#    shows nowhere else, so it gets the stricter bound.
# Both counters advance in clock ticks (1/CLK_TCK s, usually 10 ms) per CPU, so each end of the window can be off
# by up to a tick per CPU: a sample is called noisy only when the excess is beyond that resolution, quiet only when
# it is below the bound by more than that, and "unknown" in between (a window too short to tell) or where
# /proc/stat cannot be read.
NOISY_OTHER_CPU_FRACTION = 0.10
NOISY_STEAL_FRACTION = 0.05
NOISE_RULE = (
    f"noisy = other processes used > {NOISY_OTHER_CPU_FRACTION:.0%} of the window's CPU capacity "
    f"(seconds x logical CPUs) or steal > {NOISY_STEAL_FRACTION:.0%} of it, from /proc/stat; unknown = "
    f"window too short to tell or /proc/stat unreadable"
)

try:
    _TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
except (AttributeError, ValueError, OSError):
    _TICK_S = 0.01


@dataclass
class CpuSnapshot:
    """One end of a sample's window. busy_s/steal_s/n_cpus are None where /proc/stat cannot be read."""

    wall_s: float  # time.perf_counter()
    own_cpu_s: float
    busy_cpu_s: float | None
    steal_cpu_s: float | None
    n_cpus: int | None
    loadavg_1m: float | None


def _proc_stat(path: str = "/proc/stat") -> tuple[float, float, int] | None:
    """(busy seconds, steal seconds, CPU count) summed over all CPUs, or None (not Linux, unreadable, odd format).

    busy = user + nice + system + irq + softirq (guest time is already inside user and nice); idle and iowait are
    not busy; steal is counted apart (proc(5)).
    """
    try:
        with open(path, encoding="ascii") as f:
            lines = f.read().splitlines()
        total = next(line for line in lines if line.startswith("cpu "))
        ticks = [int(x) for x in total.split()[1:]]
        n_cpus = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    except (OSError, StopIteration, ValueError, UnicodeDecodeError):
        return None
    if len(ticks) < 8 or n_cpus < 1:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks[:8]
    return (user + nice + system + irq + softirq) * _TICK_S, steal * _TICK_S, n_cpus


def own_cpu_s() -> float:
    """CPU seconds of this process (every thread) and its children: reaped ones and those still running."""
    total = time.process_time()
    try:
        times = os.times()
        total += times.children_user + times.children_system
    except OSError:
        pass
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        children = []
    for child in children:
        try:
            t = child.cpu_times()
            total += t.user + t.system
        except psutil.Error:  # exited between the listing and the read: its time shows up as reaped or is lost
            continue
    return total


def _loadavg_1m() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def cpu_snapshot(*, proc_stat: str = "/proc/stat") -> CpuSnapshot:
    stat = _proc_stat(proc_stat)
    own = own_cpu_s()
    busy, steal, n_cpus = stat if stat else (None, None, None)
    return CpuSnapshot(time.perf_counter(), own, busy, steal, n_cpus, _loadavg_1m())


def classify_noise(
    *, other_cpu_s: float, steal_cpu_s: float, capacity_cpu_s: float, resolution_cpu_s: float
) -> tuple[bool | None, str]:
    """The noise rule on one window's figures -> (noisy: True / False / None for unknown, a reason in words)."""
    other_bound = NOISY_OTHER_CPU_FRACTION * capacity_cpu_s
    steal_bound = NOISY_STEAL_FRACTION * capacity_cpu_s
    if other_cpu_s > other_bound + resolution_cpu_s:
        return True, (
            f"other processes used {other_cpu_s / capacity_cpu_s:.0%} of the CPU capacity "
            f"(> {NOISY_OTHER_CPU_FRACTION:.0%})"
        )
    if steal_cpu_s > steal_bound + resolution_cpu_s:
        return True, f"steal {steal_cpu_s / capacity_cpu_s:.0%} of the CPU capacity (> {NOISY_STEAL_FRACTION:.0%})"
    if other_cpu_s + resolution_cpu_s <= other_bound and steal_cpu_s + resolution_cpu_s <= steal_bound:
        return False, "quiet"
    return None, (
        f"window too short to tell ({capacity_cpu_s:.2f} CPU-s of capacity, counters resolve "
        f"{resolution_cpu_s:.2f} CPU-s)"
    )


def noise_fields(start: CpuSnapshot, end: CpuSnapshot) -> dict:
    """What else used the CPU between two snapshots, and the verdict of the noise rule ("noisy": true/false/null)."""
    window_s = max(end.wall_s - start.wall_s, 0.0)
    own = max(end.own_cpu_s - start.own_cpu_s, 0.0)
    out: dict = {
        "noisy": None,
        "noise_reason": "",
        "window_s": round(window_s, 6),
        "logical_cpus": end.n_cpus,
        "own_cpu_s": round(own, 6),
        "other_cpu_s": None,
        "steal_cpu_s": None,
        "other_cpu_fraction": None,
        "steal_fraction": None,
        "loadavg_1m_start": start.loadavg_1m,
        "loadavg_1m_end": end.loadavg_1m,
    }
    if (
        start.busy_cpu_s is None
        or end.busy_cpu_s is None
        or start.steal_cpu_s is None
        or end.steal_cpu_s is None
        or end.n_cpus is None
        or start.n_cpus != end.n_cpus
        or window_s <= 0
    ):
        out["noise_reason"] = "unknown: /proc/stat not readable (or CPUs went on/offline)"
        return out
    capacity = window_s * end.n_cpus
    other = max(end.busy_cpu_s - start.busy_cpu_s - own, 0.0)
    steal = max(end.steal_cpu_s - start.steal_cpu_s, 0.0)
    # each end of the window: up to one tick per CPU in /proc/stat
    resolution = 2 * end.n_cpus * _TICK_S
    noisy, reason = classify_noise(
        other_cpu_s=other, steal_cpu_s=steal, capacity_cpu_s=capacity, resolution_cpu_s=resolution
    )
    out.update(
        noisy=noisy,
        noise_reason=reason if noisy is not None else "unknown: " + reason,
        other_cpu_s=round(other, 6),
        steal_cpu_s=round(steal, 6),
        other_cpu_fraction=round(other / capacity, 4),
        steal_fraction=round(steal / capacity, 4),
    )
    return out


class NoiseWindow:
    """`with NoiseWindow() as w: ...` then w.fields(): the noise fields of the block's window (see noise_fields)."""

    def __init__(self, *, proc_stat: str = "/proc/stat"):
        self._proc_stat = proc_stat
        self.start: CpuSnapshot | None = None
        self.end: CpuSnapshot | None = None

    def __enter__(self) -> NoiseWindow:
        self.start = cpu_snapshot(proc_stat=self._proc_stat)
        return self

    def __exit__(self, *exc) -> None:
        self.end = cpu_snapshot(proc_stat=self._proc_stat)

    def fields(self) -> dict:
        if self.start is None or self.end is None:
            raise RuntimeError("NoiseWindow.fields() is for after the with-block")
        return noise_fields(self.start, self.end)


def count_noisy(samples: list[dict]) -> dict:
    """{"samples", "noisy", "unknown"} over samples carrying a "noisy" field (older records without one: unknown)."""
    flags = [s.get("noisy") for s in samples]
    return {
        "samples": len(flags),
        "noisy": sum(1 for f in flags if f is True),
        "unknown": sum(1 for f in flags if f is not True and f is not False),
    }


def noise_mark(counts: dict | None) -> str:
    """count_noisy() in a table cell: "NOISY 3/12" (noisy / all samples), "quiet", "4/12 unknown"; "" for none."""
    if not counts or not counts.get("samples"):
        return ""
    unknown = f"{counts['unknown']}/{counts['samples']} unknown" if counts.get("unknown") else ""
    if counts.get("noisy"):
        return f"NOISY {counts['noisy']}/{counts['samples']}" + (f", {unknown}" if unknown else "")
    return unknown or "quiet"


# -- when one setting is really faster than another -----------------------------------------------------------------
# A claim needs the repetitions to separate: the worst sample of one beats the best of the other. With 3 samples a
# side and no real difference, every ordering of the 6 is equally likely and only 1 in 20 puts all of one side above
# the other (1 in 6 with 2 a side), so 3 is the least that makes a separation mean something (the exact one-sided
# Mann-Whitney test at p = 0.05).
MIN_SAMPLES_FOR_CLAIM = 3
NOT_MEASURED_ENOUGH = "not measured enough"
INSIDE_THE_NOISE = "inside the noise"


def compare_samples(candidate: list[float], baseline: list[float], *, higher_is_better: bool = True) -> dict:
    """Whether candidate's samples separate from baseline's.

    Returns:
        {"verdict": "better" | "worse" | "inside the noise" | "not measured enough", "n": [n_candidate, n_baseline],
         "ratio": median(candidate) / median(baseline) or None, "ratio_bounds": [worst, best] ratio or None}.
        ratio and its bounds are given only for "better" / "worse": any other ratio would be a claim the samples do
        not support.
    """
    c, b = [float(x) for x in candidate], [float(x) for x in baseline]
    out: dict = {
        "verdict": NOT_MEASURED_ENOUGH,
        "n": [len(c), len(b)],
        "ratio": None,
        "ratio_bounds": None,
        "higher_is_better": higher_is_better,
    }
    if len(c) < MIN_SAMPLES_FOR_CLAIM or len(b) < MIN_SAMPLES_FOR_CLAIM:
        return out
    sign = 1 if higher_is_better else -1
    if min(sign * x for x in c) > max(sign * x for x in b):
        out["verdict"] = "better"
    elif max(sign * x for x in c) < min(sign * x for x in b):
        out["verdict"] = "worse"
    else:
        out["verdict"] = INSIDE_THE_NOISE
        return out
    if min(b) > 0:
        out["ratio"] = statistics.median(c) / statistics.median(b)
        out["ratio_bounds"] = sorted([min(c) / max(b), max(c) / min(b)])
    return out
