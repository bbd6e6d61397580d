"""Throughput and latency of `qrun serve` under 1, 2 and 4 concurrent clients (aggregate tokens/s, p50/p95 latency).

    python tools/perf/serve_load.py MODEL [--ggufs DIR] [--clients 1,2,4] [--requests 4] [--max-tokens 128]
                                          [--threads N] [--ctx 2048] [--out results.json]

Starts a real `qrun serve MODEL` on a free loopback port (a child process, so its CPU counts as ours in the noise
check), warms it up with one request (the load), then for each level runs that many clients at once, each sending
--requests streamed chat requests one after another with the official `openai` client. Every request is greedy and
generates exactly --max-tokens tokens (the model's stop tokens are biased away), so each level does the same work
per request. Per level: aggregate completion tokens/s over the level's wall time, latency p50/p95 (request sent to
last token), time to first token p50/p95 as the client sees it (queueing included), and qrun.measure's noise record
of the window (other processes' CPU share, load average). Prints a markdown table, then one JSON object.

The stop tokens are found by text in the served GGUF's own vocabulary, as the server finds them (Engine.stop_ids):
a GGUF with another vocabulary than the released model's (`qrun demo`'s self-made tokenizers) has other ids.
Any failure (the server does not start, answers an error or goes away) ends the run with one `Error:` line on
stderr and exit code 1, and the server is stopped in every case.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import NoReturn

import openai

from qrun import gguf_file, measure, registry
from qrun.errors import QrunError
from qrun.fsutil import write_json_atomic
from qrun.runner import resolve

QRUN = [sys.executable, "-c", "import sys; from qrun.cli import main; sys.argv[0] = 'qrun'; main()"]
# Different questions per request, so that nothing could be reused between them (qrun reuses nothing anyway)
PROMPTS = [
    "请介绍一下长城的历史。",
    "Explain how a hash table works.",
    "写一段关于秋天的短文。",
    "What are the main causes of inflation?",
]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))]


class LoadError(QrunError):
    """The server failed to start or answered an error: the run cannot go on."""


class ServerProcess:
    """`qrun serve ARGS` on a free loopback port; its stderr is kept (self.lines) and read until it exits."""

    def __init__(self, args: list[str]):
        self.proc = subprocess.Popen(
            QRUN + ["serve", *args, "--port", "0"], stderr=subprocess.PIPE, text=True, encoding="utf-8"
        )
        self.lines: list[str] = []
        self.url = ""
        ready = self._ready = threading.Event()

        def read() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.lines.append(line.rstrip("\n"))
                if "listening on" in line:
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()

    def wait_ready(self) -> None:
        """Until the server listens (self.url); LoadError when it exits or takes more than 10 minutes first."""
        self._ready.wait(600)
        found = re.search(r"listening on (http://\S+/v1)", "\n".join(self.lines))
        if not found:
            self.stop()
            raise LoadError(f"qrun serve did not start: {self.last_words()}")  # its line says how to fix it
        self.url = found.group(1)

    def last_words(self) -> str:
        """The server's own error line (the CLI prints one `Error: ...`), else its last line of output."""
        errors = [line.removeprefix("Error: ") for line in self.lines if line.startswith("Error: ")]
        return (errors or [line for line in self.lines if line.strip()] or ["no output"])[-1]

    def stop(self) -> None:
        """SIGTERM (the server finishes or cancels what runs, then exits), SIGKILL if it has not after 60 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def stop_token_bias(model_or_path: str, model: str, *, ggufs_dir: str | None) -> dict[str, int]:
    """-100 on each of `model`'s stop tokens, by their ids in the served GGUF's vocabulary (the file `qrun serve
    MODEL --ggufs DIR` loads: qrun.runner.resolve.gguf_for), so that every request runs to max_tokens."""
    path = resolve.gguf_for(model_or_path, ggufs_dir=ggufs_dir)
    ids = gguf_file.token_ids(path, registry.get(model).stop_tokens)
    return {str(token): -100 for token in sorted({i for i in ids.values() if i is not None})}


def _api_error(err: openai.APIError, server: ServerProcess) -> LoadError:
    """One line for what the server answered, or for a server that went away."""
    if isinstance(err, openai.APIStatusError):
        body = err.body.get("message") if isinstance(err.body, dict) else None
        return LoadError(f"qrun serve answered HTTP {err.status_code}: {body or err.message}")
    if isinstance(err, openai.APIConnectionError):
        code = server.proc.poll()
        state = "is not answering" if code is None else f"exited with code {code}"
        return LoadError(f"qrun serve {state}: {server.last_words()}")
    return LoadError(f"qrun serve failed a request: {err.message}")  # an error event in the middle of a stream


def one_request(client: openai.OpenAI, model: str, prompt: str, *, max_tokens: int, logit_bias: dict) -> dict:
    t0 = time.perf_counter()
    first_s, tokens = None, 0
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        temperature=0,
        max_tokens=max_tokens,
        logit_bias=logit_bias,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and first_s is None:
            first_s = time.perf_counter() - t0
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    return {"latency_s": time.perf_counter() - t0, "ttft_s": first_s or 0.0, "completion_tokens": tokens}


def run_level(client, model: str, *, clients: int, requests: int, max_tokens: int, logit_bias: dict) -> dict:
    def client_loop(index: int) -> list[dict]:
        return [
            one_request(
                client, model, PROMPTS[(index + i) % len(PROMPTS)], max_tokens=max_tokens, logit_bias=logit_bias
            )
            for i in range(requests)
        ]

    with measure.NoiseWindow() as window:
        t0 = time.perf_counter()
        pool = ThreadPoolExecutor(clients)
        try:
            samples = [s for per_client in pool.map(client_loop, range(clients)) for s in per_client]
        finally:
            # after an error or Ctrl-C, not waiting for the other clients' remaining requests: the caller stops
            # the server, which ends the ones running (when all went well, every client is done already)
            pool.shutdown(wait=False, cancel_futures=True)
        wall_s = time.perf_counter() - t0
    latencies, ttfts = [s["latency_s"] for s in samples], [s["ttft_s"] for s in samples]
    tokens = sum(s["completion_tokens"] for s in samples)
    return {
        "clients": clients,
        "requests": len(samples),
        "completion_tokens": tokens,
        "wall_s": round(wall_s, 3),
        "aggregate_tokens_per_s": round(tokens / wall_s, 2),
        "latency_p50_s": round(statistics.median(latencies), 3),
        "latency_p95_s": round(percentile(latencies, 95), 3),
        "ttft_p50_s": round(statistics.median(ttfts), 3),
        "ttft_p95_s": round(percentile(ttfts, 95), 3),
        "noise": window.fields(),
    }


def markdown(levels: list[dict]) -> str:
    rows = [
        "| clients | requests | aggregate tok/s | latency p50 s | latency p95 s | TTFT p50 s | TTFT p95 s "
        "| load avg | noise |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for level in levels:
        noise = level["noise"]
        mark = measure.noise_mark(measure.count_noisy([noise]))
        load = noise.get("loadavg_1m_end")
        rows.append(
            f"| {level['clients']} | {level['requests']} | {level['aggregate_tokens_per_s']:.1f} "
            f"| {level['latency_p50_s']:.2f} | {level['latency_p95_s']:.2f} | {level['ttft_p50_s']:.2f} "
            f"| {level['ttft_p95_s']:.2f} | {'' if load is None else f'{load:.2f}'} | {mark} |"
        )
    return "\n".join(rows)


def _interrupt(_signum, _frame) -> None:
    """SIGTERM (a timeout, a cancelled job) unwinds as Ctrl-C does, so that the server is stopped on the way out."""
    raise KeyboardInterrupt


def fail(err: QrunError) -> NoReturn:
    """The run's end on an error: one `Error: <what> — <how to fix>` line and exit code 1 (the CLI's form)."""
    print(f"Error: {err.one_line()}", file=sys.stderr)
    raise SystemExit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a converted model's name or alias, or a .gguf path")
    parser.add_argument("--ggufs", default=None)
    parser.add_argument("--clients", default="1,2,4", help="comma-separated concurrency levels")
    parser.add_argument("--requests", type=int, default=4, help="requests per client per level")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--ctx", type=int, default=2048)
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()
    levels_wanted = [int(x) for x in args.clients.split(",") if x.strip()]
    serve_args = [args.model, "--ctx", str(args.ctx), "--max-queue", str(max(levels_wanted) + 1)]
    serve_args += ["--ggufs", args.ggufs] if args.ggufs else []
    serve_args += ["--threads", str(args.threads)] if args.threads else []
    signal.signal(signal.SIGTERM, _interrupt)
    server = None
    try:
        server = ServerProcess(serve_args)
        server.wait_ready()
        client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=3600)
        model = client.models.list().data[0].id
        logit_bias = stop_token_bias(args.model, model, ggufs_dir=args.ggufs)
        one_request(client, model, PROMPTS[0], max_tokens=8, logit_bias=logit_bias)  # warm-up: loads the model
        levels = [
            run_level(
                client, model, clients=n, requests=args.requests, max_tokens=args.max_tokens, logit_bias=logit_bias
            )
            for n in levels_wanted
        ]
    except openai.APIError as err:
        assert server is not None  # only requests raise APIError
        fail(_api_error(err, server))
    except QrunError as err:
        fail(err)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)  # qrun's own words and exit code for Ctrl-C (qrun/cli.py)
        raise SystemExit(130) from None
    finally:
        if server is not None:
            server.stop()
    result = {
        "model": model,
        "setup": {
            "max_tokens": args.max_tokens,
            "requests_per_client": args.requests,
            "ctx": args.ctx,
            "threads": args.threads,
            "cpus": os.cpu_count(),
            "time_unix": round(time.time()),
            "server_log": [line for line in server.lines if "loaded" in line],
        },
        "levels": levels,
    }
    print(markdown(levels))
    print()
    print(json.dumps(result, indent=1))
    if args.out:
        write_json_atomic(args.out, result)


if __name__ == "__main__":
    main()
