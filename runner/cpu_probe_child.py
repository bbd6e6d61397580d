"""The repacking probe's child (runner/cpu_probe.py): a tiny model loaded with repacking runs one batched matmul.

Run as `python -m qrun.runner.cpu_probe_child GGUF [deny-amx]` (through qrun.child). Where llama.cpp's AMX kernels
trap, this process dies with SIGILL; its return code is the verdict. With deny-amx it first denies AMX to itself
(runner/amx_guard.py), so a clean exit then says the AVX-512/AVX2 repacked kernels run here.
"""

from __future__ import annotations

import sys

from qrun.runner import amx_guard
from qrun.runner.engine import Engine


def main(argv: list[str]) -> int:
    if argv[1:] == ["deny-amx"]:
        assert amx_guard.deny_amx() and amx_guard.amx_request_denied()
    with Engine.load(argv[0], n_ctx=256, n_threads=1, repack=True) as engine:
        ids = engine.tokenize("hello world, " * 8)  # a batch of tokens: the path that uses the repacked kernels
        list(engine.generate(ids, max_tokens=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
