"""One tuning measurement: a fresh process loads one GGUF with one grid point's settings and times both workloads.

Run as `python -m qrun.bench.tune_worker JOB_JSON` (JOB_JSON is the job itself, not a file); prints one JSON object
on stdout. qrun.bench.tune starts it through qrun.child, so it dies with its `qrun tune`. A fresh process per grid
point because load time and peak memory are per process, and because one setting can kill it: llama.cpp's AMX
repacking dies with SIGILL on CPUs whose kernel does not grant AMX to the process — qrun.bench.tune records that as
a failed point instead of dying with it.

Job: {"gguf", "settings": {"repack", "use_mmap", "n_threads", "n_threads_batch", "flash_attn", "kv_type"},
      "n_ctx": int|None (None: sized to the longest workload),
      "workloads": {"chat": [prompt_tokens, gen_tokens], "prompt": [...]}, "seed": 42}
Output: {"load_s", "peak_rss_bytes", "peak_anon_bytes", "loadavg_1m", "n_ctx",
         "workloads": {name: {"prompt_tokens", "prompt_tokens_per_s", "gen_tokens", "gen_tokens_per_s"}},
         "noise": {"load" | name: qrun.measure.noise_fields of that window}, "noisy": true | false | null}
"""

from __future__ import annotations

import json
import os
import sys

from qrun import measure

# Mixed Chinese/English filler: the prompt only has to have a known token count; its content does not matter for
# speed, only the count does (llama.cpp's cost is per token).
FILLER = (
    "请用简洁的中文回答下面的问题，并给出理由。The quick brown fox jumps over the lazy dog; "
    "北京是中华人民共和国的首都，长江是中国最长的河流。Numbers 12345 and 67890 follow. "
)
WARMUP_PROMPT_TOKENS, WARMUP_GEN_TOKENS = 16, 4


def filler_ids(engine, n_tokens: int) -> list[int]:
    """Exactly n_tokens ids of plain text (tokenized once, repeated as needed)."""
    unit = engine.tokenize(FILLER)
    return (unit * (n_tokens // len(unit) + 1))[:n_tokens]


def _loadavg_1m() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def run_job(job: dict) -> dict:
    from qrun.runner.engine import Engine, aligned_ctx  # llama.cpp is loaded in the worker only

    out: dict = {"loadavg_1m": _loadavg_1m(), "workloads": {}, "noise": {}}
    with measure.MemoryWatch() as watch:
        # no n_ctx: sized to the work (the longest workload and its answer), as qrun loads models
        n_ctx = job.get("n_ctx") or aligned_ctx(max(p + g for p, g in job["workloads"].values()))
        with measure.NoiseWindow() as window:
            engine = Engine.load(job["gguf"], n_ctx=n_ctx, seed=job.get("seed", 42), **job["settings"])
        out["noise"]["load"] = window.fields()
        out["load_s"], out["n_ctx"], out["amx_denied"] = engine.load_s, engine.n_ctx, engine.amx_denied
        # every answer runs to its full length: end-of-turn and stop tokens are banned (random or tiny models
        # would otherwise stop at different points for different settings)
        banned = {t: float("-inf") for t in {*engine.stop_ids, engine.eos_id} if t is not None and t >= 0}
        longest = max(p for p, _ in job["workloads"].values())
        ids = filler_ids(engine, max(longest, WARMUP_PROMPT_TOKENS))
        # warm-up: faults the weights in, starts the thread pool, and runs a batched matmul (where AMX crashes)
        for _ in engine.generate(ids[:WARMUP_PROMPT_TOKENS], max_tokens=WARMUP_GEN_TOKENS, logit_bias=banned):
            pass
        for name, (n_prompt, n_gen) in job["workloads"].items():
            with measure.NoiseWindow() as window:
                generation = engine.generate(ids[:n_prompt], max_tokens=n_gen, temperature=0.0, logit_bias=banned)
                for _ in generation:
                    pass
            out["noise"][name] = window.fields()
            st = generation.stats
            assert st is not None  # set when the generation ends
            out["workloads"][name] = {
                "prompt_tokens": st.prompt_tokens,
                "prompt_tokens_per_s": st.prompt_tokens_per_s,
                "gen_tokens": st.gen_tokens,
                "gen_tokens_per_s": st.gen_tokens_per_s,
            }
            watch.sample()
        engine.close()
    out["peak_rss_bytes"] = max(watch.peak_rss_bytes, measure.peak_rss_bytes_since_start())
    out["peak_anon_bytes"] = watch.peak_anon_bytes
    # one flag per measurement: noisy if any of its windows (load, each workload) is, unknown if none is and any is
    # unknown (qrun.measure's rule)
    flags = [w["noisy"] for w in out["noise"].values()]
    out["noisy"] = True if True in flags else (None if None in flags else False)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m qrun.bench.tune_worker JOB_JSON", file=sys.stderr)
        return 2
    from qrun.errors import QrunError

    try:
        result = run_job(json.loads(argv[0]))
    except QrunError as err:
        print(f"Error: {err.one_line()}", file=sys.stderr, flush=True)
        return 3
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
