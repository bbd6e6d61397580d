"""This machine's arithmetic peak as measured: float32 matrix multiply (BLAS SGEMM) GFLOP/s at 1..N threads.

Prompt processing is matrix-matrix work: a batch of prompt tokens goes through every weight matrix, ~2 FLOPs per
weight per token (a multiply and an add; attention over a 512-token prompt adds ~1 % for these 7B shapes). So
prompt tokens/s x 2 x matmul weights is the arithmetic rate llama.cpp reached, and SGEMM's rate on the same cores
is the reference it is compared with (docs/performance.md). llama.cpp's Q4 kernels multiply in int8 (AVX-512 VNNI /
AVX2), whose per-instruction width is 4x float32's, so this is the measured float32 peak, not a bound on the int8 path.

Each thread count runs in a fresh process with the BLAS limited to one thread (OPENBLAS/OMP/MKL_NUM_THREADS=1) and
N Python threads multiplying their own matrices (numpy releases the GIL), so N means N busy cores, as in
tools/perf/bandwidth.py. Run: `python -m tools.perf.compute_peak [--json]`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

from qrun import child
from tools.perf.bandwidth import thread_counts_arg

DEFAULT_SIZE = 1024  # float32 n x n: 4 MiB per matrix, past L2, the size BLAS reaches its peak at
DEFAULT_REPEAT = 7
# The child runs this module by name (qrun.child): from the checkout, like `python -m tools.perf.compute_peak`.
_CHECKOUT = Path(__file__).resolve().parents[2]
_ONE_BLAS_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _measure_here(threads: int, size: int, repeat: int) -> dict:
    """In this process (BLAS already limited to one thread): GFLOP/s of `threads` concurrent SGEMMs."""
    import numpy as np

    from tools.perf.bandwidth import _run_threads

    rng = np.random.default_rng(0)
    mats = [
        (
            rng.standard_normal((size, size), dtype=np.float32),
            rng.standard_normal((size, size), dtype=np.float32),
            np.empty((size, size), dtype=np.float32),
        )
        for _ in range(threads)
    ]
    per_run = 4  # products per thread per timed run, so one run lasts long enough to time (~0.1 s per product)

    def work(i):
        a, b, c = mats[i]
        for _ in range(per_run):
            np.matmul(a, b, out=c)

    _run_threads(threads, work)  # warm-up
    flops = threads * per_run * 2 * size**3
    rates = [flops / _run_threads(threads, work) / 1e9 for _ in range(repeat)]
    return {
        "threads": threads,
        "size": size,
        "repeat": repeat,
        "best_gflop_per_s": max(rates),
        "median_gflop_per_s": statistics.median(rates),
        "min_gflop_per_s": min(rates),
        "blas": _blas_name(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def _blas_name() -> str:
    import numpy as np

    try:
        config = np.show_config(mode="dicts")
        return config["Build Dependencies"]["blas"]["name"]
    except Exception:  # the config's layout differs between numpy versions; the name is only informative
        return "unknown"


def measure(*, threads: int, size: int = DEFAULT_SIZE, repeat: int = DEFAULT_REPEAT) -> dict:
    """SGEMM GFLOP/s at `threads` threads (1 GFLOP = 1e9 floating-point operations), measured in a fresh process."""
    done = child.run(
        "tools.perf.compute_peak",
        ["--in-process", "--threads", str(threads), "--size", str(size), "--repeat", str(repeat)],
        timeout_s=600,
        env_extra=_ONE_BLAS_THREAD,
        cwd=_CHECKOUT,
    ).check()
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_all(*, thread_counts=None, size: int = DEFAULT_SIZE, repeat: int = DEFAULT_REPEAT) -> list:
    counts = thread_counts or sorted({1, os.cpu_count() or 1})
    return [measure(threads=t, size=size, repeat=repeat) for t in counts]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads",
        default=None,
        type=thread_counts_arg,
        help="comma-separated thread counts (default: 1 and all CPUs)",
    )
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE)
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)  # measure()'s child
    args = parser.parse_args(argv)
    if args.in_process:  # one thread count, in this process (BLAS limited by its environment), JSON on stdout
        print(json.dumps(_measure_here(args.threads[0], args.size, args.repeat)))
        return 0
    results = measure_all(thread_counts=args.threads, size=args.size, repeat=args.repeat)
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for r in results:
            print(
                f"threads {r['threads']}: SGEMM {r['median_gflop_per_s']:.1f} GFLOP/s (best "
                f"{r['best_gflop_per_s']:.1f}, {r['blas']}); load average {r['loadavg']}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
