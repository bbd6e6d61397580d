"""This machine's memory bandwidth, measured with numpy: a STREAM-like copy and triad at 1..N threads.

Decoding one token reads every weight once, so bandwidth / bytes read per token is the ceiling on generation
tokens/s (docs/performance.md, "Decode speed against the memory-bandwidth ceiling"). numpy's copy and ufuncs run
on one thread but release the GIL on large arrays, so N Python
threads over N disjoint slices load N cores. Bytes are counted as STREAM does (copy: read a + write b = 2 arrays;
triad a = b + s*c: 3 arrays; write-allocate traffic not counted). Run: `python -m tools.perf.bandwidth [--json]`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time

import numpy as np

from qrun import settings

DEFAULT_ARRAY_BYTES = 512 << 20  # per array: far above any cache (L2 here is 2 MB per core)
DEFAULT_REPEAT = 7


def _run_threads(n_threads: int, work) -> float:
    """Start work(i) on n_threads threads at a barrier; returns the wall time from release to the last finish."""
    barrier = threading.Barrier(n_threads + 1)
    done = []

    def body(i):
        barrier.wait()
        work(i)
        done.append(time.perf_counter())

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return max(done) - t0


def measure(*, threads: int, array_bytes: int = DEFAULT_ARRAY_BYTES, repeat: int = DEFAULT_REPEAT) -> dict:
    """Copy and triad GB/s (1 GB = 1e9 bytes) at `threads` threads: best and median of `repeat` runs."""
    n = array_bytes // 8
    a, b, c = np.ones(n), np.full(n, 2.0), np.full(n, 0.5)  # touched: pages exist before timing
    tmp = np.empty(n)
    bounds = [(n * i // threads, n * (i + 1) // threads) for i in range(threads)]

    def copy(i):
        lo, hi = bounds[i]
        np.copyto(b[lo:hi], a[lo:hi])

    def triad(i):
        # a = b + 3*c in slices that fit L2, so the temporary stays in cache and memory sees 3 arrays' traffic
        lo, hi = bounds[i]
        step = 1 << 15
        t = tmp[lo : lo + step]
        for s in range(lo, hi, step):
            e = min(s + step, hi)
            np.multiply(c[s:e], 3.0, out=t[: e - s])
            np.add(b[s:e], t[: e - s], out=a[s:e])

    out = {"threads": threads, "array_bytes": array_bytes, "repeat": repeat}
    for name, work, arrays in (("copy", copy, 2), ("triad", triad, 3)):
        _run_threads(threads, work)  # warm-up
        rates = [arrays * n * 8 / _run_threads(threads, work) / 1e9 for _ in range(repeat)]
        out[name] = {
            "best_gb_per_s": max(rates),
            "median_gb_per_s": statistics.median(rates),
            "min_gb_per_s": min(rates),
        }
    out["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    return out


def measure_all(*, thread_counts=None, array_bytes: int = DEFAULT_ARRAY_BYTES, repeat: int = DEFAULT_REPEAT) -> list:
    counts = thread_counts or sorted({1, os.cpu_count() or 1})
    return [measure(threads=t, array_bytes=array_bytes, repeat=repeat) for t in counts]


def thread_counts_arg(value: str) -> list[int]:
    """argparse type of --threads: "1,2" -> [1, 2] (positive integers up to settings.max_threads())."""
    from qrun.errors import UsageError

    try:
        counts = settings.check_thread_list(value, flag="--threads", zero_ok=False)
    except UsageError as err:
        raise argparse.ArgumentTypeError(err.one_line()) from None
    if not counts:
        raise argparse.ArgumentTypeError(f"positive integers separated by commas, e.g. 1,2 (got {value!r})")
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads",
        default=None,
        type=thread_counts_arg,
        help="comma-separated thread counts (default: 1 and all CPUs)",
    )
    parser.add_argument("--array-mib", type=int, default=DEFAULT_ARRAY_BYTES >> 20)
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = measure_all(thread_counts=args.threads, array_bytes=args.array_mib << 20, repeat=args.repeat)
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for r in results:
            print(
                f"threads {r['threads']}: copy {r['copy']['median_gb_per_s']:.1f} GB/s (best "
                f"{r['copy']['best_gb_per_s']:.1f}), triad {r['triad']['median_gb_per_s']:.1f} GB/s (best "
                f"{r['triad']['best_gb_per_s']:.1f}); load average {r['loadavg']}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
