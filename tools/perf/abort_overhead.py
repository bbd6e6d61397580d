"""Prompt and generation speed with and without an abort callback polled after every graph node of every decode.

runner/engine.py sets the callback (so that Ctrl-C stops llama.cpp mid-call) for prompt evaluation only; this
measures what it would cost on each, to check that choice on a given model and machine.

    python tools/perf/abort_overhead.py GGUF [--rounds 5] [--threads 1] [--prompt-tokens 2000] [--gen-tokens 200]

Both settings are measured on one loaded model, interleaved round by round (on/off/on/off...), so a busy
neighbour slows both alike; each round records the 1-minute load average. Prints medians and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import llama_cpp

from qrun.runner import engine as engine_mod
from qrun.runner.engine import Engine


def _one_round(engine: Engine, prompt_ids: list[int], gen_tokens: int, callback) -> tuple[float, float]:
    # the engine clears the callback after each prompt; keep it set for the whole round instead
    real_set = llama_cpp.llama_set_abort_callback
    llama_cpp.llama_set_abort_callback = lambda ctx, _cb, data: real_set(ctx, callback, data)
    try:
        gen = engine.generate(prompt_ids, max_tokens=gen_tokens, temperature=0.0).run()
    finally:
        llama_cpp.llama_set_abort_callback = real_set
    stats = gen.stats
    return stats.prompt_tokens_per_s, stats.gen_tokens_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prompt-tokens", type=int, default=2000)
    parser.add_argument("--gen-tokens", type=int, default=200)
    args = parser.parse_args()
    n_ctx = args.prompt_tokens + args.gen_tokens + 256
    engine = Engine.load(args.gguf, n_ctx=n_ctx, n_threads=args.threads)
    text = "今天天气很好，我们去公园散步吧。The quick brown fox jumps over the lazy dog. " * (args.prompt_tokens // 10)
    prompt_ids = engine.tokenize(text)[: args.prompt_tokens]
    settings = {"on": engine_mod._abort_decode, "off": llama_cpp.ggml_abort_callback()}  # the latter: NULL
    samples: dict[str, list[tuple[float, float, float]]] = {"on": [], "off": []}
    _one_round(engine, prompt_ids, 8, settings["off"])  # warm-up: pages the weights in
    for _ in range(args.rounds):
        for name, callback in settings.items():
            prompt_tps, gen_tps = _one_round(engine, prompt_ids, args.gen_tokens, callback)
            samples[name].append((prompt_tps, gen_tps, os.getloadavg()[0]))
    summary = {}
    for name, rows in samples.items():
        summary[name] = {
            "prompt_tokens_per_s": statistics.median(r[0] for r in rows),
            "gen_tokens_per_s": statistics.median(r[1] for r in rows),
            "loadavg_1m": [round(r[2], 2) for r in rows],
        }
    summary["ratio_on_over_off"] = {
        k: round(summary["on"][k] / summary["off"][k], 4) for k in ("prompt_tokens_per_s", "gen_tokens_per_s")
    }
    summary["setup"] = {
        "gguf": args.gguf,
        "threads": args.threads,
        "prompt_tokens": len(prompt_ids),
        "gen_tokens": args.gen_tokens,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "time_unix": round(time.time()),
    }
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
