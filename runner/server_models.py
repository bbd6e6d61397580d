"""The models behind `qrun serve`: one worker thread owns every loaded Engine and runs one generation at a time.

A llama.cpp context is not safe to use from two threads, and a 7B model's decode already uses every core, so
requests wait in a bounded FIFO queue instead of running side by side. The worker loads the model a request names
when it is not loaded, first unloading the least recently used models until the new one fits in memory (the rule is
in runner/server_memory.py and README "qrun serve"). Events (prompt ids, text pieces, the end) cross to the event
loop with loop.call_soon_threadsafe into each job's asyncio.Queue. A job is cancelled by setting job.cancelled,
which the worker reads between tokens: a client that disconnects, or the server stopping.
"""

from __future__ import annotations

import asyncio
import collections
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from qrun import interrupts, settings
from qrun.errors import PromptError, QrunError, UsageError
from qrun.runner import server_memory as memory
from qrun.runner.ask import sampling_options
from qrun.runner.engine import Engine


class QueueFull(QrunError):
    """More requests wait than --max-queue allows."""


class ShuttingDown(QrunError):
    """The server is stopping and takes no new work."""


@dataclass
class Served:
    """One model the server offers: its GGUF and load settings, resolved once at start (qrun.runner.resolve)."""

    name: str
    gguf: Path
    load: settings.LoadSettings
    as_model: str | None = None


@dataclass
class Job:
    """One request's work. messages (chat) or text (raw completion); sampling values None = the model's default."""

    model: str
    loop: asyncio.AbstractEventLoop
    kind: str = "chat"  # "chat" | "completion": which endpoint asked
    messages: list[dict] | None = None
    system: str | None = None
    text: str | None = None
    sampling: dict = field(default_factory=dict)  # max_tokens, temperature, top_p, top_k
    seed: int = settings.DEFAULT_SEED
    stop: tuple[str, ...] = ()
    logit_bias: dict[int, float] | None = None
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: str | None = None  # why, once cancelled: "client disconnected" | "server stopping"
    queued_at_s: float = field(default_factory=time.perf_counter)

    def emit(self, kind: str, value=None) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))


class StopText:
    """OpenAI's `stop` strings over streamed text: text is released once no stop string can start in it, and
    generation ends at the first stop string (which is not part of the answer)."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops, self.held = stops, ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text safe to send, True when a stop string was reached)."""
        if not self.stops:
            return text, False
        self.held += text
        hits = [i for i in (self.held.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.held = self.held[: min(hits)], ""
            return out, True
        # only prefixes as long as the held text can match: a 200,000-character stop string would otherwise be sliced
        # 200,000 times per token (seconds per token; one request would hold the single worker for minutes)
        most = len(self.held)
        keep = max(
            (n for s in self.stops for n in range(min(len(s) - 1, most), 0, -1) if self.held.endswith(s[:n])),
            default=0,
        )
        out = self.held[: len(self.held) - keep]
        self.held = self.held[len(out) :]
        return out, False

    def flush(self) -> str:
        out, self.held = self.held, ""
        return out


class ModelPool:
    """The queue and the worker thread. submit() from the event loop; stop() and close() at shutdown."""

    def __init__(
        self,
        served: dict[str, Served],
        *,
        max_queue: int,
        max_models: int = 0,
        notice: Callable[[str], None] = lambda _m: None,
        on_done: Callable[[Job, dict], None] = lambda _job, _result: None,
    ):
        """on_done(job, result) runs on the worker thread after each generation (the server's log and metrics)."""
        self.served, self.max_queue, self.max_models, self.notice = served, max_queue, max_models, notice
        self.on_done = on_done
        self._cond = threading.Condition()
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: Job | None = None
        self._loaded: collections.OrderedDict[str, Engine] = collections.OrderedDict()  # least recently used first
        self._footprints: dict[str, int] = {}
        self._loading: str | None = None
        self._generating = False  # the running job is past its model's load (see _abort_if_generating)
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="qrun-serve-worker", daemon=True)
        self._baseline_anon_bytes = memory.anon_bytes()
        self.loads_total = 0
        self.recent_job_s: collections.deque[float] = collections.deque(maxlen=20)

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> int:
        """Queue a job; returns how many wait before it. Raises QueueFull or ShuttingDown."""
        with self._cond:
            if self._stopping:
                raise ShuttingDown("the server is stopping", "retry against a running server")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are already waiting", "retry later")
            self._waiting.append(job)
            self._cond.notify()
            return len(self._waiting) - 1 + (self._running is not None)

    def cancel(self, job: Job, reason: str) -> None:
        job.cancelled = job.cancelled or reason
        with self._cond:
            if job in self._waiting:
                self._waiting.remove(job)
            self._abort_if_generating(job)

    def _abort_if_generating(self, job: Job) -> None:
        """Stop a prompt evaluation of the running job inside llama.cpp (held: self._cond). Tokens are checked one
        by one anyway; this is for a long prompt, which is one llama.cpp call of seconds per 512 tokens on a 7B.
        Never during a load: a model being loaded is wanted by the requests queued behind it."""
        if job is self._running and self._generating:
            interrupts.request_abort()

    def retry_after_s(self) -> int:
        """A guess for Retry-After: the queue's length times the recent mean request time, 1 s to 60 s."""
        mean_s = sum(self.recent_job_s) / len(self.recent_job_s) if self.recent_job_s else 1.0
        return max(1, min(60, math.ceil(mean_s * (len(self._waiting) + 1))))

    def stop(self) -> None:
        """Take no new work: queued jobs end with a 503, the running one is cancelled at its next token."""
        with self._cond:
            self._stopping = True
            waiting, self._waiting = list(self._waiting), collections.deque()
            if self._running is not None:
                self._running.cancelled = self._running.cancelled or "server stopping"
                self._abort_if_generating(self._running)
            self._cond.notify()
        for job in waiting:
            job.cancelled = "server stopping"
            job.emit("error", ShuttingDown("the server is stopping", "retry against a running server"))

    def close(self) -> None:
        """Stop, wait for the worker (it unloads every model) to end."""
        self.stop()
        if self._thread.is_alive():
            self._thread.join()

    def status(self) -> dict:
        with self._cond:
            return {
                "loaded": list(self._loaded),
                "loading": self._loading,
                "running": self._running.model if self._running else None,
                "queued": len(self._waiting),
            }

    # -- the worker thread ---------------------------------------------------------------------------------------
    def _work(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._waiting and not self._stopping:
                        self._cond.wait()
                    if not self._waiting:
                        return
                    job = self._running = self._waiting.popleft()
                t0 = time.perf_counter()
                try:
                    self._run(job)
                except QrunError as err:
                    job.emit("error", err)
                except Exception as err:  # a bug must not kill the worker: this request fails, the next runs
                    job.emit("error", QrunError(f"internal error: {type(err).__name__}: {err}", "see the server log"))
                finally:
                    self.recent_job_s.append(time.perf_counter() - t0)
                    with self._cond:
                        self._running, self._generating = None, False
                        interrupts.clear_abort()  # an abort that came after the last llama.cpp call of this job
        finally:
            for engine in self._loaded.values():
                engine.close()
            self._loaded.clear()

    def _engine(self, name: str) -> Engine:
        engine = self._loaded.get(name)
        if engine is not None:
            self._loaded.move_to_end(name)
            return engine
        served = self.served[name]
        need = self._footprints.setdefault(name, memory.footprint_bytes(served.gguf, served.load))
        lru = [(n, self._footprints[n]) for n in self._loaded]
        free = memory.free_for_models_bytes(self._baseline_anon_bytes)
        for old in memory.fit_loaded(lru, need, free_bytes=free, max_models=self.max_models):
            self.notice(f"qrun serve: unloading {old} to make room for {name}")
            with self._cond:
                self._loaded.pop(old).close()
            free = memory.free_for_models_bytes(self._baseline_anon_bytes)
        if need > free - memory.RESERVE_BYTES:
            self.notice(
                f"note: {name} needs about {need / (1 << 30):.1f} GiB (its GGUF and KV cache); "
                f"{free / (1 << 30):.1f} GiB is free for models: loading it anyway, it may page"
            )
        with self._cond:
            self._loading = name
        try:
            engine = Engine.load(served.gguf, served.load, notice=self.notice, as_model=served.as_model)
        finally:
            with self._cond:
                self._loading = None
        self.loads_total += 1
        self.notice(f"qrun serve: loaded {name} in {engine.load_s:.2f} s ({engine.n_ctx}-token context)")
        with self._cond:
            self._loaded[name] = engine
        return engine

    def _run(self, job: Job) -> None:
        if job.cancelled:  # cancelled as it was taken from the queue
            if job.cancelled == "server stopping":
                job.emit("error", ShuttingDown("the server is stopping", "retry against a running server"))
            return
        engine = self._engine(job.model)
        if job.messages is not None:
            ids = engine.prompt_ids(job.messages, system=job.system)
        else:
            ids = engine.raw_prompt_ids(job.text or "")
        if len(ids) >= engine.n_ctx:
            raise PromptError(
                f"the prompt is {len(ids)} tokens but the context holds {engine.n_ctx}",
                "shorten the messages, or restart the server with a larger --ctx",
            )
        if job.logit_bias and max(job.logit_bias) >= engine.n_vocab:
            raise UsageError(
                f"logit_bias names token {max(job.logit_bias)}; {job.model} has {engine.n_vocab} tokens",
                f"use token ids from 0 to {engine.n_vocab - 1}",
            )
        options = sampling_options(engine.spec, **job.sampling)
        t_start = time.perf_counter()
        job.emit("start", {"prompt_ids": ids})
        generation = engine.generate(ids, seed=job.seed, logit_bias=job.logit_bias, **options)
        stop, finish = StopText(job.stop), None
        with self._cond:
            self._generating = True
            if job.cancelled:
                interrupts.request_abort()
        try:
            for piece in generation:
                if job.cancelled:
                    break
                text, hit = stop.feed(piece)
                if text:
                    job.emit("text", text)
                if hit:
                    finish = "stop"
                    break
        except KeyboardInterrupt:  # interrupts.request_abort() (or a signal) stopped a llama.cpp call
            job.cancelled = job.cancelled or "interrupted"
        finally:
            generation.close()
        assert generation.stats is not None  # set when the generation ends
        stats = generation.stats
        if finish is None and not job.cancelled:
            job.emit("text", stop.flush())
            finish = "length" if stats.stop_reason in ("max_tokens", "context_full") else "stop"
        result = {
            "finish_reason": finish,
            "cancelled": job.cancelled,
            "prompt_tokens": len(ids),
            "completion_tokens": len(generation.token_ids),
            "token_ids": list(generation.token_ids),
            "queued_s": t_start - job.queued_at_s,
            "stats": stats.to_dict(),
        }
        job.emit("end", result)
        self.on_done(job, result)
