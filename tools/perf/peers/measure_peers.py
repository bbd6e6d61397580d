#!/usr/bin/env python
"""Side-by-side measurements of the peer runners chatglm.cpp 0.4.2 and qwen.cpp 0.1.3 (q4_0, random weights).

Run with the venv's python (chatglm's worker imports chatglm_cpp from it; qwen's prompt is token-counted with
tiktoken from it):

    PEERS_VENV/bin/python tools/perf/peers/measure_peers.py --peer chatglm,qwen --threads 1,2 --repeat 5

Every repetition of every (peer, threads) pair runs two FRESH processes:
  tg phase: load the model, short prompt, then exactly --gen-tokens single-token decode steps (EOS ignored for
            chatglm; for qwen the C++ main stops at EOS by itself, so an early stop is detected from its own
            token count and that run is retried, up to --retries times, every attempt kept in the JSON).
  pp phase: load the model, a --pp-tokens long prompt (exactly that many tokens), one forward pass over it.
Order is interleaved: for rep: for peer: for threads: tg, pp.  --warmup N untimed-but-recorded rounds first
(warm page cache; excluded from the summary).

Per process: load time (s), prompt tok/s, decode tok/s, peak RSS (VmHWM, kernel-tracked), peak anonymous
memory (max sampled RssAnon), peak file-backed RSS (max sampled RssFile), max thread count, wall time,
1-minute load average before/after.

How the numbers are taken
  chatglm: the python binding (chatglm_cpp.Pipeline) is driven by a worker mode of this script that does what
           Pipeline._stream_generate_ids does (model.generate_next_token + count_tokens per step) but times the
           prompt call and the decode calls separately (time.perf_counter) and never stops at EOS.
           chatglm.cpp 0.4.2 has no thread option: it uses std::thread::hardware_concurrency(), so the worker
           runs with LD_PRELOAD=shim/libnprocs.so PEER_NPROCS=<threads> (overrides get_nprocs/sysconf).
           Load time = wall time of Pipeline(path).
  qwen:    the C++ `main` binary (--mode generate -v -t <threads>), parsed from its own PerfStreamer output:
           "prompt time: X ms / N tokens" (= prompt forward incl. sampling of the first new token) and
           "output time: Y ms / M tokens" (first new token -> end, i.e. M-1 decode steps).
           decode tok/s = (M-1)/Y; the peer's own "ms/token" (Y/M) is kept as reported.
           -l (max total length) = prompt tokens + gen-tokens + 1 so that exactly gen-tokens decode steps
           run; load time = its "loaded qwen model ... within: Z ms".
  In both peers "decode tok/s" counts single-token decode steps only (like llama-bench tg), and the first
  new token is attributed to the prompt pass.  Both peers mmap the weight file and their "load" only maps it:
  the first forward pass (the prompt) pays the page faults of touching every weight page (warm page cache:
  a fraction of a second; cold: the whole file read).  ttft_s = load + prompt pass of the tg phase.

Output: --out JSON (default results/peers-<timestamp>.json) with every sample and median/min/max per
(peer, threads, metric); a short table is printed.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

# The folder the peers were built in (tools/perf/peers/README.md): its venv, binaries, shim and model files.
HERE = Path(os.environ.get("PEERS_DIR", ".")).resolve()
CHATGLM_MODEL = HERE / "chatglm3-6b-q4_0.bin"
QWEN_MODEL = HERE / "qwen-7b-chat-q4_0.bin"
QWEN_MAIN = HERE / "qwen-build/bin/main"
QWEN_TIKTOKEN = HERE / "qwen.tiktoken"  # copy of the real-scale Qwen checkpoint's qwen.tiktoken
SHIM = HERE / "shim/libnprocs.so"

SHORT_PROMPT = "Write a short story about a robot who learns to paint."
# plain ASCII text, repeated until it is longer than the pp prompt; both tokenizers then cut it to exactly
# --pp-tokens tokens (chatglm: encode(text, max_length) keeps [gMASK]<sop> + the start; qwen main: -c keeps the
# last max_context_length tokens).
LONG_UNIT = (
    "The history of computing is a story of layered abstractions. Early machines were programmed by "
    "rewiring panels, later by punched cards, and eventually by stored programs written in assembly "
    "language. Compilers raised the level again, letting people describe algorithms instead of register "
    "moves. Operating systems hid the hardware behind processes and files, and networks joined machines "
    "into systems larger than any one of them. "
)


# --------------------------------------------------------------------------------------------- sampling
def read_status(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem"):
                    out[k] = int(v.split()[0]) * 1024
                elif k == "Threads":
                    out[k] = int(v)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return out


class Sampler(threading.Thread):
    def __init__(self, pid, interval=0.02):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.stop = threading.Event()
        self.peak = {"VmHWM": 0, "VmRSS": 0, "RssAnon": 0, "RssFile": 0, "Threads": 0}
        self.n = 0

    def run(self):
        while not self.stop.is_set():
            st = read_status(self.pid)
            if st is None:
                break
            # a zombie (exited, not yet reaped) reports no memory lines: keep the last real values
            if "VmRSS" in st:
                self.n += 1
                for k in self.peak:
                    if k in st:
                        self.peak[k] = max(self.peak[k], st[k])
            self.stop.wait(self.interval)


def run_sampled(cmd, env=None, timeout=None):
    la_before = os.getloadavg()
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True, errors="replace")
    s = Sampler(p.pid)
    s.start()
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    wall = time.perf_counter() - t0
    s.stop.set()
    s.join()
    la_after = os.getloadavg()
    mem = {
        "peak_rss_bytes": s.peak["VmHWM"] or s.peak["VmRSS"],
        "peak_anon_bytes": s.peak["RssAnon"],
        "peak_file_rss_bytes": s.peak["RssFile"],
        "max_threads": s.peak["Threads"],
        "mem_samples": s.n,
    }
    return {
        "returncode": p.returncode,
        "stdout": out,
        "stderr": err,
        "wall_s": wall,
        "loadavg_before": la_before[0],
        "loadavg_after": la_after[0],
        **mem,
    }


# --------------------------------------------------------------------------------------------- chatglm
def chatglm_worker(args):
    """Runs inside the fresh child process (under the nprocs shim). Prints one JSON line."""
    t0 = time.perf_counter()
    import chatglm_cpp
    import chatglm_cpp._C as _C

    t_import = time.perf_counter() - t0
    kw = {} if args.ctx is None else {"max_length": args.ctx}
    t1 = time.perf_counter()
    pipe = chatglm_cpp.Pipeline(str(args.model), **kw)
    load_s = time.perf_counter() - t1
    model, tok = pipe.model, pipe.tokenizer
    eos = {model.config.eos_token_id, *model.config.extra_eos_token_ids}
    res = {
        "load_s": load_s,
        "import_s": t_import,
        "chatglm_cpp_version": chatglm_cpp.__version__,
        "model_max_length": model.config.max_length,
    }
    if args.phase == "tg":
        ids = tok.encode(SHORT_PROMPT, 512)
        gen_steps = args.gen_tokens
        gen_config = _C.GenerationConfig(
            max_length=model.config.max_length, max_new_tokens=-1, max_context_length=512
        )  # peer defaults for sampling
        n_ctx = len(ids)
        t = time.perf_counter()
        nxt = model.generate_next_token(ids, None, gen_config, 0, n_ctx)
        prompt_s = time.perf_counter() - t
        n_past = model.count_tokens(ids, None)
        ids = ids + [nxt]
        out_ids, eos_hits = [nxt], int(nxt in eos)
        t = time.perf_counter()
        for _ in range(gen_steps):
            nxt = model.generate_next_token(ids, None, gen_config, n_past, n_ctx)
            n_past = model.count_tokens(ids, None)
            ids.append(nxt)
            out_ids.append(nxt)
            eos_hits += int(nxt in eos)
        decode_s = time.perf_counter() - t
        res.update(
            prompt_tokens=n_ctx,
            prompt_s=prompt_s,
            decode_steps=gen_steps,
            decode_s=decode_s,
            new_tokens=len(out_ids),
            eos_sampled_and_ignored=eos_hits,
            text_head=tok.decode(out_ids[:16])[:80],
        )
    else:
        ids = tok.encode(LONG_UNIT * 20, args.pp_tokens)
        gen_config = _C.GenerationConfig(max_length=model.config.max_length, max_context_length=args.pp_tokens)
        t = time.perf_counter()
        model.generate_next_token(ids, None, gen_config, 0, len(ids))
        prompt_s = time.perf_counter() - t
        res.update(prompt_tokens=len(ids), prompt_s=prompt_s)
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmHWM", "RssAnon", "Threads")):
                k, v = line.split(":")
                res["self_" + k] = v.strip()
    print("RESULT " + json.dumps(res), flush=True)


def run_chatglm(phase, threads, args):
    env = dict(os.environ)
    env["LD_PRELOAD"] = str(SHIM) + ((":" + env["LD_PRELOAD"]) if env.get("LD_PRELOAD") else "")
    env["PEER_NPROCS"] = str(threads)
    env["OMP_NUM_THREADS"] = str(threads)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        "chatglm",
        "--phase",
        phase,
        "--model",
        str(args.chatglm_model),
        "--gen-tokens",
        str(args.gen_tokens),
        "--pp-tokens",
        str(args.pp_tokens),
    ]
    if args.ctx is not None:
        cmd += ["--ctx", str(args.ctx)]
    if args.nice:
        cmd = ["nice", "-n", str(args.nice)] + cmd
    r = run_sampled(cmd, env=env, timeout=args.timeout)
    sample = {k: r[k] for k in r if k not in ("stdout", "stderr")}
    sample["cmd"] = (
        " ".join(f"{k}={env[k]}" for k in ("LD_PRELOAD", "PEER_NPROCS", "OMP_NUM_THREADS")) + " " + " ".join(cmd)
    )
    m = re.search(r"^RESULT (\{.*\})$", r["stdout"], re.M)
    if r["returncode"] != 0 or not m:
        sample["error"] = (r["stderr"] or r["stdout"])[-2000:]
        return sample
    w = json.loads(m.group(1))
    sample["worker"] = w
    sample["load_s"] = w["load_s"]
    sample["prompt_tokens"] = w["prompt_tokens"]
    if phase == "tg":
        sample["decode_steps"] = w["decode_steps"]
        sample["decode_s"] = w["decode_s"]
        sample["tg_tok_s"] = w["decode_steps"] / w["decode_s"]
        sample["tg_prompt_tok_s"] = w["prompt_tokens"] / w["prompt_s"]
        sample["ttft_s"] = w["load_s"] + w["prompt_s"]
        sample["complete"] = w["decode_steps"] == args.gen_tokens
    else:
        sample["pp_s"] = w["prompt_s"]
        sample["pp_tok_s"] = w["prompt_tokens"] / w["prompt_s"]
        sample["complete"] = w["prompt_tokens"] == args.pp_tokens
    return sample


# --------------------------------------------------------------------------------------------- qwen
QWEN_PAT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
    r"""\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def qwen_count_tokens(text, tiktoken_path):
    import base64

    import tiktoken

    ranks = {}
    with open(tiktoken_path, "rb") as f:
        for line in f:
            if line.strip():
                tok, rank = line.split()
                ranks[base64.b64decode(tok)] = int(rank)
    enc = tiktoken.Encoding("qwen", pat_str=QWEN_PAT, mergeable_ranks=ranks, special_tokens={})
    return len(enc.encode(text))


def parse_qwen(out):
    d = {}
    m = re.search(r"within: ([\d.]+) ms", out)
    if m:
        d["load_ms"] = float(m.group(1))
    m = re.search(r"prompt time: ([\d.]+) ms / (\d+) tokens \(([\d.]+) ms/token\)", out)
    if m:
        d["prompt_ms"], d["prompt_tokens"], d["prompt_ms_per_token"] = (
            float(m.group(1)),
            int(m.group(2)),
            float(m.group(3)),
        )
    m = re.search(r"output time: ([\d.]+) ms / (\d+) tokens \(([\d.]+) ms/token\)", out)
    if m:
        d["output_ms"], d["output_tokens"], d["output_ms_per_token_reported"] = (
            float(m.group(1)),
            int(m.group(2)),
            float(m.group(3)),
        )
    m = re.search(r"num_threads = (\d+)", out)
    if m:
        d["num_threads"] = int(m.group(1))
    return d


def run_qwen(phase, threads, args, n_short):
    if phase == "tg":
        prompt, ctx = SHORT_PROMPT, 512
        max_len = n_short + args.gen_tokens + 1
        want_prompt, want_out = n_short, args.gen_tokens + 1
    else:
        prompt, ctx = LONG_UNIT * 20, args.pp_tokens
        max_len = args.pp_tokens + 2
        want_prompt, want_out = args.pp_tokens, 2
    cmd = [
        str(args.qwen_main),
        "-m",
        str(args.qwen_model),
        "--tiktoken",
        str(args.qwen_tiktoken),
        "--mode",
        "generate",
        "-p",
        prompt,
        "-l",
        str(max_len),
        "-c",
        str(ctx),
        "-t",
        str(threads),
        "-v",
    ]
    if args.nice:
        cmd = ["nice", "-n", str(args.nice)] + cmd
    attempts = []
    for attempt in range(1 + args.retries):
        r = run_sampled(cmd, timeout=args.timeout)
        sample = {k: r[k] for k in r if k not in ("stdout", "stderr")}
        sample["cmd"] = " ".join(repr(c) if " " in c else c for c in cmd)
        sample["attempt"] = attempt
        p = parse_qwen(r["stdout"])
        sample["parsed"] = p
        if r["returncode"] != 0 or "output_tokens" not in p:
            sample["error"] = (r["stderr"] or r["stdout"])[-2000:]
            attempts.append(sample)
            break
        sample["load_s"] = p["load_ms"] / 1000
        sample["prompt_tokens"] = p["prompt_tokens"]
        sample["complete"] = p["prompt_tokens"] == want_prompt and p["output_tokens"] == want_out
        if p["prompt_tokens"] != want_prompt:
            sample["error"] = f"prompt has {p['prompt_tokens']} tokens, expected {want_prompt}"
        if phase == "tg":
            sample["decode_steps"] = p["output_tokens"] - 1
            sample["decode_s"] = p["output_ms"] / 1000
            if sample["decode_steps"] > 0:
                sample["tg_tok_s"] = sample["decode_steps"] / sample["decode_s"]
            sample["tg_prompt_tok_s"] = p["prompt_tokens"] / (p["prompt_ms"] / 1000)
            sample["ttft_s"] = (p["load_ms"] + p["prompt_ms"]) / 1000
            sample["peer_reported_ms_per_token"] = p["output_ms_per_token_reported"]
        else:
            sample["pp_s"] = p["prompt_ms"] / 1000
            sample["pp_tok_s"] = p["prompt_tokens"] / sample["pp_s"]
        m = re.search(r"within: [\d.]+ ms\n(.*?)\nprompt time:", r["stdout"], re.S)
        sample["text_head"] = (m.group(1).strip() if m else "")[:80]
        attempts.append(sample)
        if sample["complete"] or "error" in sample:
            break
        print(
            f"    qwen {phase} t={threads}: stopped early ({p['output_tokens']} of {want_out} tokens, EOS); retrying",
            flush=True,
        )
    final = dict(attempts[-1])
    if len(attempts) > 1:
        final["earlier_attempts"] = attempts[:-1]
    return final


# --------------------------------------------------------------------------------------------- driver
METRICS = [
    "load_s",
    "ttft_s",
    "tg_tok_s",
    "tg_prompt_tok_s",
    "pp_tok_s",
    "peak_rss_bytes",
    "peak_anon_bytes",
    "peak_file_rss_bytes",
    "max_threads",
    "wall_s",
]


def summarize(samples):
    groups = {}
    for s in samples:
        if s.get("warmup") or "error" in s or not s.get("complete"):
            continue
        g = groups.setdefault(f"{s['peer']}/t{s['threads']}", {})
        for k in METRICS:
            if k in s:
                g.setdefault(f"{s['phase']}.{k}", []).append(s[k])
    out = {}
    for g, d in groups.items():
        out[g] = {
            k: {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)} for k, v in sorted(d.items())
        }
    return out


def host_info():
    info = {"nproc": os.cpu_count(), "uname": " ".join(os.uname())}
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer", default="chatglm,qwen", help="comma list of chatglm,qwen")
    ap.add_argument("--threads", default="1,2", help="comma list, e.g. 1,2")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds before the repetitions")
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--pp-tokens", type=int, default=512)
    ap.add_argument("--phases", default="tg,pp", help="comma list of tg,pp")
    ap.add_argument("--retries", type=int, default=3, help="qwen: reruns when EOS stopped generation early")
    ap.add_argument("--ctx", type=int, default=None, help="chatglm Pipeline max_length (default: model's 8192)")
    ap.add_argument("--nice", type=int, default=0, help="run the peers under nice -n N (validation only)")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--chatglm-model", type=Path, default=CHATGLM_MODEL)
    ap.add_argument("--qwen-model", type=Path, default=QWEN_MODEL)
    ap.add_argument("--qwen-main", type=Path, default=QWEN_MAIN)
    ap.add_argument("--qwen-tiktoken", type=Path, default=QWEN_TIKTOKEN)
    # internal
    ap.add_argument("--worker", choices=["chatglm"], help=argparse.SUPPRESS)
    ap.add_argument("--phase", choices=["tg", "pp"], help=argparse.SUPPRESS)
    ap.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker == "chatglm":
        chatglm_worker(args)
        return

    peers = [p for p in args.peer.split(",") if p]
    threads = [int(t) for t in args.threads.split(",") if t]
    phases = [p for p in args.phases.split(",") if p]
    for p in peers:
        assert p in ("chatglm", "qwen"), p
    n_short = None
    if "qwen" in peers:
        n_short = qwen_count_tokens(SHORT_PROMPT, args.qwen_tiktoken)
    out = args.out or HERE / "results" / time.strftime("peers-%Y%m%d-%H%M%S.json")
    out.parent.mkdir(parents=True, exist_ok=True)

    doc = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "host": host_info(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "short_prompt": SHORT_PROMPT,
        "samples": [],
    }
    rounds = [("warmup", i) for i in range(args.warmup)] + [("rep", i) for i in range(args.repeat)]
    for kind, i in rounds:
        for peer in peers:
            for t in threads:
                for phase in phases:
                    print(f"[{kind} {i}] {peer} threads={t} {phase} ...", flush=True)
                    if peer == "chatglm":
                        s = run_chatglm(phase, t, args)
                    else:
                        s = run_qwen(phase, t, args, n_short)
                    s.update(peer=peer, threads=t, phase=phase, rep=i, warmup=(kind == "warmup"))
                    doc["samples"].append(s)
                    if "error" in s:
                        print(f"    ERROR: {s['error'][-500:]}", flush=True)
                    else:
                        key = "tg_tok_s" if phase == "tg" else "pp_tok_s"
                        print(
                            f"    load {s.get('load_s', float('nan')):.2f} s  {key} "
                            f"{s.get(key, float('nan')):.2f}  peak RSS {s['peak_rss_bytes'] / 2**20:.0f} MiB  "
                            f"anon {s['peak_anon_bytes'] / 2**20:.0f} MiB  threads<= {s['max_threads']}  "
                            f"complete={s.get('complete')}  load1 {s['loadavg_before']:.2f}->"
                            f"{s['loadavg_after']:.2f}",
                            flush=True,
                        )
                    # write as we go, so an interrupted run keeps what it measured
                    doc["summary"] = summarize(doc["samples"])
                    out.write_text(json.dumps(doc, indent=1))
    doc["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    doc["summary"] = summarize(doc["samples"])
    out.write_text(json.dumps(doc, indent=1))

    print(f"\nwrote {out}")
    hdr = (
        f"{'peer/threads':14} {'tg tok/s':>22} {'pp tok/s':>22} {'load s (tg)':>12} {'peak RSS MiB':>13} "
        f"{'peak anon MiB':>14}  n"
    )
    print(hdr)
    print("-" * len(hdr))
    for g, d in doc["summary"].items():

        def f(k, scale=1.0, fmt="{:.2f}", d=d):
            if k not in d:
                return "-"
            v = d[k]
            return (fmt + " [" + fmt + "-" + fmt + "]").format(v["median"] / scale, v["min"] / scale, v["max"] / scale)

        def med(k, scale=1.0, fmt="{:.0f}", d=d):
            return fmt.format(d[k]["median"] / scale) if k in d else "-"

        n = max((v["n"] for v in d.values()), default=0)
        print(
            f"{g:14} {f('tg.tg_tok_s'):>22} {f('pp.pp_tok_s'):>22} {med('tg.load_s', fmt='{:.2f}'):>12} "
            f"{med('tg.peak_rss_bytes', 2**20):>13} {med('tg.peak_anon_bytes', 2**20):>14}  {n}"
        )
    print("(median [min-max]; peak memory from the tg phase; pp-phase memory is in the JSON)")


if __name__ == "__main__":
    main()
