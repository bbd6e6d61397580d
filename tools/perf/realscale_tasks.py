"""The measurements behind `python -m tools.perf.realscale`, one function each (see realscale.py for the flow).

Functions named *_one / load_once run in a fresh process (realscale._in_fresh_process), so their wall time and
peak memory are theirs alone. Every result carries the load average before and after it was taken.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import statistics
import subprocess
import time
from pathlib import Path

from qrun import measure
from qrun.fsutil import write_json_atomic

PP_TOKENS = 512  # llama-bench's pp512
TG_TOKENS = 128  # llama-bench's tg128
TG_SUITE = Path(__file__).resolve().parent / "suites" / "perf-tg128.json"
# Text the prompt-processing suite repeats until the chat-formatted prompt is exactly PP_TOKENS tokens.
_PP_FILLER = (
    "请仔细阅读下面这段关于天气、城市、交通和饮食的记录，然后用三句话总结其中最重要的信息。"
    "The quick brown fox jumps over the lazy dog while the city wakes up and the trains start running. "
)


_QUIET_LOG = None


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def param_count(model: str, tokenizer_dir: Path, config_overrides: dict | None = None) -> int:
    """Parameters of the checkpoint the checkpoint step writes (the real config.json with --config-overrides)."""
    from qrun.convert import synthetic

    config = json.loads((Path(tokenizer_dir) / "config.json").read_text(encoding="utf-8"))
    config.update(config_overrides or {})
    return sum(math.prod(shape) for _, shape in synthetic.hf_tensor_shapes(model, config))


def drop_page_cache() -> bool:
    """Flush and drop the kernel's page cache (needs root); False when not allowed: reads are then warm."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def convert_one(model: str, ckpt_dir: str, quant: str, out_dir: str, threads: int | None) -> dict:
    """`qrun convert MODEL --from CKPT --quant QUANT` through the library, in this (fresh) process."""
    from qrun.convert.pipeline import convert_model
    from qrun.measure import peak_rss_bytes_since_start

    load_before, t0 = _loadavg(), time.perf_counter()
    manifest = convert_model(model, from_dir=ckpt_dir, quant=quant, out_dir=out_dir, threads=threads)
    wall_s = time.perf_counter() - t0
    return {
        "quant": quant,
        "wall_s": wall_s,
        "steps": manifest["steps"],
        "size_bytes": manifest["size_bytes"],
        "unquantized_type": manifest.get("unquantized_type"),
        "unquantized_size_bytes": manifest.get("unquantized_size_bytes"),
        "bits_per_weight": manifest.get("bits_per_weight"),
        "tensor_types": manifest.get("tensor_types"),
        "threads": manifest.get("threads"),
        "process_peak_rss_bytes": peak_rss_bytes_since_start(),
        "loadavg_before": load_before,
        "loadavg_after": _loadavg(),
    }


def read_file(path: Path) -> int:
    """Read a file once (bytes read); with a warm page cache this is a memory copy."""
    n, buf = 0, bytearray(16 << 20)
    with open(path, "rb", buffering=0) as f:
        while k := f.readinto(buf):
            n += k
    return n


def io_floor(ckpt_dir: Path, out_bytes: int, *, scratch: Path, drop_caches: bool) -> dict:
    """Time to read every shard of the checkpoint and to write (and fsync) `out_bytes`: what any converter pays."""
    dropped = drop_page_cache() if drop_caches else False
    load_before = _loadavg()
    buf = bytearray(16 << 20)
    view = memoryview(buf)
    read_bytes, t0 = 0, time.perf_counter()
    for path in sorted(Path(ckpt_dir).glob("*.safetensors")):
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(view):
                read_bytes += n
    read_s = time.perf_counter() - t0
    scratch.mkdir(parents=True, exist_ok=True)
    target = scratch / "iofloor.bin"
    t0 = time.perf_counter()
    with open(target, "wb", buffering=0) as f:
        left = out_bytes
        while left:
            left -= f.write(view[: min(left, len(buf))])
        os.fsync(f.fileno())
    write_s = time.perf_counter() - t0
    target.unlink()
    return {
        "page_cache_dropped": dropped,
        "read_bytes": read_bytes,
        "read_s": read_s,
        "write_bytes": out_bytes,
        "write_s": write_s,
        "floor_s": read_s + write_s,
        "read_gb_per_s": read_bytes / read_s / 1e9,
        "write_gb_per_s": out_bytes / write_s / 1e9,
        "loadavg_before": load_before,
        "loadavg_after": _loadavg(),
    }


def load_once(kind: str, gguf: str, threads: int, repack: bool, n_ctx: int | None = None) -> dict:
    """Load time of one GGUF: "qrun" = Engine.load; "llama.cpp" = the C API calls Llama() makes, with the same
    model and context parameters (mmap, repack, n_ctx as qrun chose, n_batch 512, flash attention off), nothing
    else."""
    import llama_cpp

    from qrun.runner.engine import Engine

    load_before = _loadavg()
    window = measure.NoiseWindow().__enter__()  # closed once the timed part ends, on either branch
    t0 = time.perf_counter()
    if kind == "qrun":
        engine = Engine.load(gguf, n_threads=threads, repack=repack)
        wall_s, n_ctx = time.perf_counter() - t0, engine.n_ctx
    else:
        llama_cpp.llama_backend_init()
        global _QUIET_LOG  # ctypes callbacks must outlive every call llama.cpp makes to them
        _QUIET_LOG = llama_cpp.llama_log_callback(lambda *a: None)
        llama_cpp.llama_log_set(_QUIET_LOG, ctypes.c_void_p(0))
        mparams = llama_cpp.llama_model_default_params()
        mparams.load_mode = llama_cpp.LLAMA_LOAD_MODE_MMAP
        mparams.use_extra_bufts = repack
        t0 = time.perf_counter()
        model = llama_cpp.llama_model_load_from_file(gguf.encode(), mparams)
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = n_ctx or 4096, 512, 512
        cparams.n_threads = cparams.n_threads_batch = threads
        cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        ctx = llama_cpp.llama_init_from_model(model, cparams)
        wall_s, n_ctx = time.perf_counter() - t0, llama_cpp.llama_n_ctx(ctx)
    window.__exit__(None, None, None)
    return {
        "load_s": wall_s,
        "n_ctx": n_ctx,
        "rss_bytes": measure.rss_bytes(),
        "anon_bytes": measure.anon_bytes(),
        "loadavg_before": load_before,
        **window.fields(),
    }


def matmul_weights(gguf: Path) -> int:
    """Weights one prompt token is multiplied with: every tensor's elements but the token-embedding table's (a
    lookup, not a product); the norms it also counts are 0.01 % of a 7B model."""
    from qrun.convert.manifest import read_tensor_infos

    return sum(n for name, _type, n in read_tensor_infos(gguf) if name != "token_embd.weight")


def weights_read_per_token_bytes(gguf: Path) -> int:
    """Bytes of tensor data one decoded token reads: every tensor except the token-embedding table (a lookup
    reads one row of it; the output matrix is read whole)."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    from qrun.convert.manifest import read_tensor_infos

    total = 0
    for name, ggml_type, n in read_tensor_infos(gguf):
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
        if name != "token_embd.weight":
            total += n // block * size
    return total


def pp_suite(gguf: Path, path: Path, tokens: int = PP_TOKENS) -> dict:
    """Write a one-question suite whose chat-formatted prompt is `tokens` tokens for this GGUF's tokenizer."""
    from qrun.runner.engine import Engine

    with Engine.load(gguf, vocab_only=True) as engine:

        def count(n_chars: int) -> int:
            return len(engine.prompt_ids([{"role": "user", "content": text[:n_chars]}]))

        text = _PP_FILLER * (1 + 4 * tokens // len(_PP_FILLER))
        lo, hi = 1, len(text)  # largest prefix whose prompt fits in `tokens`
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if count(mid) <= tokens else (lo, mid - 1)
        n_tokens = count(lo)
    suite = {
        "name": f"perf-pp{tokens}",
        "description": f"one prompt of {n_tokens} tokens for {engine.spec.name} "
        "(prompt-processing speed; answers are not meaningful with random weights)",
        "questions": [{"id": f"pp{tokens}", "question": text[:lo], "rubric": [{"id": "any", "patterns": ["re:."]}]}],
    }
    write_json_atomic(path, suite)
    return {"path": str(path), "prompt_tokens": n_tokens}


def _runs(doc: dict, metric: str) -> dict:
    out = {}
    for run in doc["runs"]:
        threads = run["settings"]["n_threads"]
        entry = {
            "status": run["status"],
            "load_s": run["load_s"],
            "peak_rss_bytes": run["peak_rss_bytes"],
            "peak_anon_bytes": run["peak_anon_bytes"],
        }
        if run["questions"]:
            q = run["questions"][0]
            reps = q["repetitions"]
            entry.update(
                {
                    metric: [r[metric] for r in reps],
                    "median": statistics.median(r[metric] for r in reps),
                    "prompt_tokens": q["median"].get("prompt_tokens"),
                    "gen_tokens": [r["gen_tokens"] for r in reps],
                    "loadavg_1m": [r.get("loadavg_1m") for r in reps],
                    "stop_reason": q["stop_reason"],
                    "noise": measure.count_noisy(reps),
                }
            )
        out[str(threads)] = entry
    return out


def qrun_bench(model: str, gguf: Path, *, threads: list[int], repeat: int, out: Path, repack: bool) -> dict:
    """qrun bench's own workers on the pp512 suite (max 1 new token) and the tg128 suite (128 new tokens)."""
    from qrun.bench.run import BenchConfig, run_bench

    out.mkdir(parents=True, exist_ok=True)
    pp = pp_suite(gguf, out / "perf-pp512.json")
    result = {
        "gguf": str(gguf),
        "gguf_size_bytes": gguf.stat().st_size,
        "repack": repack,
        "pp_suite": pp,
        "weights_read_per_token_bytes": weights_read_per_token_bytes(gguf),
    }
    for name, suite, max_tokens, metric in (
        ("pp", pp["path"], 1, "prompt_tokens_per_s"),
        ("tg", str(TG_SUITE), TG_TOKENS, "gen_tokens_per_s"),
    ):
        doc = run_bench(
            BenchConfig(
                models=[str(gguf)],
                suite=suite,
                threads=threads,
                repeat=repeat,
                max_tokens=max_tokens,
                out_dir=str(out / name),
                extra_settings={"repack": repack},
                command=f"realscale {name} {model}",
            )
        )
        result[name] = _runs(doc, metric)
    return result


def llama_bench(binary: str, gguf: Path, *, threads: list[int], repeat: int, repack: bool) -> dict:
    """llama-bench pp512/tg128 on the same file and threads, with qrun's settings: flash attention off (Llama()'s
    default; llama-bench's is auto), mmap, and the same CPU weight repacking."""
    cmd = [
        binary,
        "-m",
        str(gguf),
        "-p",
        str(PP_TOKENS),
        "-n",
        str(TG_TOKENS),
        "-r",
        str(repeat),
        "-t",
        ",".join(map(str, threads)),
        "-fa",
        "off",
        "-lm",
        "mmap",
        "--repack",
        "1" if repack else "0",
        "-o",
        "json",
    ]
    load_before, t0 = _loadavg(), time.perf_counter()
    with measure.NoiseWindow() as window:  # one window over all of llama-bench's runs (its own CPU counts as ours)
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"command": cmd, "error": (proc.stderr.strip().splitlines() or ["?"])[-1], "exit_code": proc.returncode}
    results = {}
    for row in json.loads(proc.stdout):
        kind = "pp" if row["n_prompt"] and not row["n_gen"] else "tg"
        samples = row["samples_ts"]
        results.setdefault(kind, {})[str(row["n_threads"])] = {
            "samples": samples,
            "median": statistics.median(samples),
            "avg_ts": row["avg_ts"],
            "stddev_ts": row["stddev_ts"],
            "build_commit": row.get("build_commit"),
            "cpu_info": row.get("cpu_info"),
        }
    return {
        "command": cmd,
        "wall_s": time.perf_counter() - t0,
        "loadavg_before": load_before,
        "loadavg_after": _loadavg(),
        "noise": window.fields(),
        **results,
    }
