"""`qrun serve`'s running totals for GET /metrics (Prometheus text exposition format) and its per-request log line."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

from qrun.runner.server_models import Job


class Metrics:
    """Running totals for GET /metrics (Prometheus text format), and the one log line per generation."""

    def __init__(self, log: Callable[[str], None]):
        self.log, self._lock = log, threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()  # (endpoint, status)
        self.tokens: Counter[tuple[str, str]] = Counter()  # (model, "prompt" | "completion")
        self.seconds: Counter[str] = Counter()  # ttft, generation, queued
        self.generations = 0
        self.cancelled = 0

    def count(self, endpoint: str, status: int) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1

    def done(self, job: Job, result: dict) -> None:
        stats = result["stats"]
        with self._lock:
            self.generations += 1
            self.cancelled += bool(result["cancelled"])
            self.tokens[(job.model, "prompt")] += result["prompt_tokens"]
            self.tokens[(job.model, "completion")] += result["completion_tokens"]
            self.seconds["ttft"] += stats["ttft_s"]
            self.seconds["generation"] += stats["total_s"]
            self.seconds["queued"] += result["queued_s"]
        end = f"cancelled ({result['cancelled']})" if result["cancelled"] else f"finish {result['finish_reason']}"
        self.log(
            f"qrun serve: {job.kind} {job.model}: prompt {result['prompt_tokens']} tokens, "
            f"generated {result['completion_tokens']} tokens, ttft {stats['ttft_s']:.3f} s, "
            f"{stats['gen_tokens_per_s']:.1f} tokens/s, waited {result['queued_s']:.2f} s, {end}"
        )

    def render(self, status: dict) -> str:
        lines = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
            lines.extend([f"# HELP qrun_{name} {help_}", f"# TYPE qrun_{name} {kind}"])
            lines.extend(f"qrun_{name}{labels} {value:g}" for labels, value in samples)

        with self._lock:
            metric(
                "requests_total",
                "counter",
                "HTTP requests answered, by endpoint and status.",
                [(f'{{endpoint="{e}",status="{s}"}}', n) for (e, s), n in sorted(self.requests.items())],
            )
            for kind in ("prompt", "completion"):
                metric(
                    f"{kind}_tokens_total",
                    "counter",
                    f"{kind.capitalize()} tokens, by model.",
                    [(f'{{model="{m}"}}', n) for (m, k), n in sorted(self.tokens.items()) if k == kind],
                )
            metric(
                "generations_total", "counter", "Generations run (cancelled ones included).", [("", self.generations)]
            )
            metric(
                "cancelled_total",
                "counter",
                "Generations cancelled by a disconnect or shutdown.",
                [("", self.cancelled)],
            )
            for name, help_ in (
                ("ttft", "Time to first token (prompt evaluation)."),
                ("generation", "Time generating, first token included."),
                ("queued", "Time waiting in the queue and for a model to load."),
            ):
                metric(f"{name}_seconds_total", "counter", help_, [("", self.seconds[name])])
        metric("queue_waiting", "gauge", "Requests waiting for the worker.", [("", status["queued"])])
        metric("models_loaded", "gauge", "Models loaded now.", [("", len(status["loaded"]))])
        metric("model_loads_total", "counter", "Models loaded since start.", [("", status["loads_total"])])
        return "\n".join(lines) + "\n"
