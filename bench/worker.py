"""One benchmark worker: a fresh process that loads one GGUF with one set of settings and answers the suite.

Run as `python -m qrun.bench.worker JOB.json` (or `-` to read the job from stdin); qrun.bench.run starts one per
(model, settings) through qrun.child (so it dies with its `qrun bench`), so each model's load time and memory are
its own. Every measurement is appended to the job's results file as one JSON line, flushed and fsynced as soon as it
is taken: a crash, an OOM kill or Ctrl-C loses nothing already measured. Progress goes to stderr; the last stderr
line of a failed worker is its reason.

The job (written by run.py)::

    {"run_id": "...", "model": "qwen-7b-chat", "quant": "Q4_K_M", "gguf": "/path/x.gguf",
     "settings": {"n_threads": 2, "n_threads_batch": 2, "n_ctx": 4096, "use_mmap": true},  # Engine.load kwargs
     "questions": [{"id": "seed-1", "text": "..."}], "max_tokens": 256, "repeat": 1, "warmup_tokens": 16,
     "seed": 42, "results_path": "/out/measurements.jsonl"}

Lines written (each carries "run_id" and "event"): start, identity, then per repetition a fresh load, a warm-up
and one rep line per question, then done. identity is the GGUF's sha256, hashed from the file itself before it is
loaded (a manifest's hash is only compared with it, never copied), with its size and the seconds hashing took.
Every load and rep line carries the noise fields of its window (qrun.measure.noise_fields: "noisy"
true/false/null, other processes' and steal CPU time, the load average at both ends). Memory: peak RSS counts the
mmap'd GGUF pages (file-backed, droppable page cache); peak anonymous memory
is what the process really allocated (llama.cpp's repacked weights, KV cache, buffers). See qrun.measure.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from qrun import interrupts, measure, settings
from qrun.bench.score import chinese_chars
from qrun.convert.manifest import read_manifest
from qrun.convert.quantize import ftype_for
from qrun.errors import GGUFError, QrunError
from qrun.fsutil import sha256_file

MEMORY_NOTE = (
    "peak_rss_bytes: everything resident, including the mmap'd GGUF (file-backed page cache); "
    "peak_anon_bytes: anonymous memory only (repacked weights, KV cache, buffers)"
)


class _Sink:
    """Appends JSON lines to the results file, durable one by one."""

    def __init__(self, path: Path, run_id: str):
        self.run_id = run_id
        self._f = open(path, "a", encoding="utf-8")

    def write(self, event: str, **fields) -> None:
        record = {"run_id": self.run_id, "event": event, "time_unix": round(time.time(), 3), **fields}
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def _loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _progress(job: dict, text: str) -> None:
    print(f"  [{job['run_id']}] {text}", file=sys.stderr, flush=True)


def measure_generation(generation, *, prompt_tokens_hint: int = 0) -> dict:
    """Run a Generation to its end and return the per-answer metrics (engine stats + Chinese chars/s)."""
    for _ in generation:
        pass
    stats = generation.stats.to_dict()
    zh = chinese_chars(generation.text)
    # Chinese characters per second of decoding (after the first token), the same window as gen_tokens_per_s:
    # tokens/s alone does not compare models whose tokenizers pack different amounts of text in a token.
    decode_s = stats["total_s"] - stats["ttft_s"]
    return {
        "answer": generation.text,
        **{
            k: stats[k]
            for k in (
                "prompt_tokens",
                "ttft_s",
                "prompt_tokens_per_s",
                "gen_tokens",
                "gen_tokens_per_s",
                "total_s",
                "stop_reason",
            )
        },
        "decode_s": decode_s,
        "zh_chars": zh,
        "zh_chars_per_s": zh / decode_s if decode_s > 0 else 0.0,
    }


def file_identity(gguf: Path, *, progress=lambda _text: None) -> dict:
    """The GGUF's sha256 hashed from its bytes (streamed), its size, how long hashing took, and whether the
    manifest next to it (if any, and about this file name) records the same hash.

    Raises:
        GGUFError: the file is missing or unreadable.
    """
    try:
        size_bytes = gguf.stat().st_size
        t0 = time.perf_counter()
        digest = sha256_file(gguf)
        sha256_s = time.perf_counter() - t0
    except OSError as err:
        raise GGUFError(
            f"cannot read {gguf}: {err.strerror or err}", "check the path, or convert the model again"
        ) from None
    manifest = read_manifest(gguf) or {}
    recorded = manifest.get("sha256") if manifest.get("gguf") == gguf.name else None
    if recorded and recorded != digest:
        progress(
            f"warning: {gguf.name} is not the file its manifest describes (sha256 {digest[:12]}, manifest "
            f"{recorded[:12]}); results record the file's own hash"
        )
    return {
        "gguf_sha256": digest,
        "gguf_sha256_s": round(sha256_s, 4),
        "gguf_size_bytes": size_bytes,
        "manifest_sha256": recorded,
        "manifest_sha256_matches": None if not recorded else recorded == digest,
    }


def quant_in_file(file_type) -> str | None:
    """The QUANT name of a GGUF's general.file_type (llama.cpp's LLAMA_FTYPE_MOSTLY_*), None if not one of ours."""
    by_ftype = {ftype_for(q): q for q in settings.QUANTS}
    return by_ftype.get(file_type) if isinstance(file_type, int) else None


def _load_and_warm_up(
    engine_cls, load: settings.LoadSettings, job: dict, sink: _Sink, watch: measure.MemoryWatch, rep: int
):
    """One timed load (its own noise window, a "load" line) and the warm-up -> (engine, [(question id, ids)])."""
    gguf = Path(job["gguf"])
    _progress(job, f"loading {gguf.name} (repetition {rep}/{job['repeat']})")
    with measure.NoiseWindow() as window:
        engine = engine_cls.load(gguf, load, seed=job["seed"])
    noise = window.fields()
    watch.sample()
    sink.write(
        "load",
        rep=rep,
        load_s=engine.load_s,
        n_ctx=engine.n_ctx,
        model_detected=engine.spec.name,
        quant_in_file=quant_in_file(engine.header.metadata.get("general.file_type")),
        effective_settings=engine.settings.to_dict(),
        rss_after_load_bytes=measure.rss_bytes(),
        anon_after_load_bytes=measure.anon_bytes(),
        peak_rss_bytes=watch.peak_rss_bytes,
        peak_anon_bytes=watch.peak_anon_bytes,
        **noise,
    )
    _progress(job, f"loaded in {engine.load_s:.2f} s" + (" (noisy)" if noise["noisy"] else ""))
    prompts = [(q["id"], engine.prompt_ids([{"role": "user", "content": q["text"]}])) for q in job["questions"]]
    if job.get("warmup_tokens", 0) > 0 and prompts:
        # One warm-up per load: pages the weights in and spins up the thread pool before anything is timed.
        warm = measure_generation(
            engine.generate(prompts[0][1], max_tokens=job["warmup_tokens"], temperature=0.0, seed=job["seed"])
        )
        sink.write("warmup", rep=rep, question_id=prompts[0][0], total_s=warm["total_s"], gen_tokens=warm["gen_tokens"])
    return engine, prompts


def run_job(job: dict) -> None:
    """Measure one job, streaming lines to job["results_path"] (see the module docstring)."""
    from qrun.runner import resolve  # imported here: llama.cpp is loaded only in worker processes
    from qrun.runner.engine import Engine

    sink = _Sink(Path(job["results_path"]), job["run_id"])
    gguf = Path(job["gguf"])
    watch = measure.MemoryWatch().__enter__()
    try:
        sink.write(
            "start",
            pid=os.getpid(),
            model=job["model"],
            quant=job["quant"],
            gguf=str(gguf),
            gguf_size_bytes=gguf.stat().st_size if gguf.exists() else None,
            settings=job["settings"],
            settings_source=job.get("settings_source"),
            rss_before_load_bytes=measure.rss_bytes(),
            anon_before_load_bytes=measure.anon_bytes(),
            loadavg=_loadavg(),
        )
        sink.write("identity", **file_identity(gguf, progress=lambda text: _progress(job, text)))
        load = settings.LoadSettings.from_dict(job["settings"])
        if load.n_ctx is None:  # sized to the longest question's prompt + the answer limit
            with Engine.load(gguf, load, vocab_only=True) as vocab:
                longest = max(
                    (len(vocab.prompt_ids([{"role": "user", "content": q["text"]}])) for q in job["questions"]),
                    default=1,
                )
                load = resolve.size_ctx(load, work_tokens=longest + job["max_tokens"], n_ctx_train=vocab.n_ctx_train)
        # A fresh load per repetition, before its questions: load time gets a median and a spread like every other
        # figure, and each repetition's answers follow their own load and warm-up.
        for rep in range(1, job["repeat"] + 1):
            engine, prompts = _load_and_warm_up(Engine, load, job, sink, watch, rep)
            for qid, ids in prompts:
                loadavg = _loadavg()
                with measure.NoiseWindow() as window:
                    result = measure_generation(
                        engine.generate(ids, max_tokens=job["max_tokens"], temperature=0.0, seed=job["seed"])
                    )
                noise = window.fields()
                watch.sample()
                sink.write(
                    "rep",
                    question_id=qid,
                    rep=rep,
                    **result,
                    loadavg=loadavg,
                    loadavg_1m=loadavg[0] if loadavg else None,
                    **noise,
                    peak_rss_bytes=max(watch.peak_rss_bytes, measure.peak_rss_bytes_since_start()),
                    peak_anon_bytes=watch.peak_anon_bytes,
                )
                _progress(
                    job,
                    f"{qid} rep {rep}/{job['repeat']}: {result['gen_tokens']} tokens, "
                    f"{result['gen_tokens_per_s']:.1f} tok/s, stop {result['stop_reason']}"
                    + (" (noisy)" if noise["noisy"] else ""),
                )
            engine.close()
        watch.__exit__(None, None, None)
        sink.write(
            "done",
            wall_s=watch.wall_s,
            memory_note=MEMORY_NOTE,
            peak_rss_bytes=max(watch.peak_rss_bytes, measure.peak_rss_bytes_since_start()),
            peak_anon_bytes=watch.peak_anon_bytes,
        )
    finally:
        sink.close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m qrun.bench.worker JOB.json|-", file=sys.stderr)
        return 2
    interrupts.install(sigterm=True)  # SIGTERM, like Ctrl-C, ends the run with what was measured recorded
    try:
        text = sys.stdin.read() if argv[0] == "-" else Path(argv[0]).read_text(encoding="utf-8")
        run_job(json.loads(text))
    except QrunError as err:
        print(f"Error: {err.one_line()}", file=sys.stderr, flush=True)
        return 3
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
