"""Streamed generation on a loaded Engine: one decode, one sample, a set lookup and a cached piece per token.

Drives the C API directly (llama_decode on a reused one-token batch + a llama_sampler chain) rather than
Llama.generate, which costs 3-5 % against llama-bench (about 0.3 ms per token of Python and sampler, measured on a
7B shape) and silently reuses a matching prompt prefix.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Generator, Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import llama_cpp

from qrun import interrupts
from qrun.errors import GGUFError
from qrun.measure import MemoryWatch

if TYPE_CHECKING:
    from qrun.runner.engine import Engine


@dataclass
class GenerationStats:
    prompt_tokens: int
    ttft_s: float
    prompt_tokens_per_s: float
    gen_tokens: int  # every sampled token, the stop token included
    gen_tokens_per_s: float  # decode only: tokens after the first / time after the first
    total_s: float
    # "eos" | "stop_token" | "max_tokens" | "context_full" (the context ran out first) | "interrupted" (Ctrl-C)
    stop_reason: str
    peak_rss_bytes: int = 0
    peak_anon_bytes: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class TextStream:
    """Token bytes in, text out: an incremental UTF-8 decoder, so a character split across tokens (byte-fallback
    pieces of a rare CJK character or an emoji) is emitted whole once its last byte arrives, never split or
    dropped; invalid bytes become U+FFFD. The answer starts at its first visible character (models open with a
    space or a newline after the prompt's "Assistant:" / "<|assistant|>")."""

    def __init__(self):
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.started = False

    def feed(self, data: bytes, final: bool = False) -> str:
        text = self._utf8.decode(data, final)
        if not self.started and text:
            text = text.lstrip()
            self.started = bool(text)
        return text


class Generation:
    """Iterate for UTF-8-safe text pieces as they are generated; afterwards .text, .token_ids and .stats."""

    def __init__(self, engine: Engine, prompt_ids: list[int], chain, *, max_tokens: int):
        self._engine, self._prompt_ids, self._chain = engine, prompt_ids, chain
        # the answer ends at max_tokens or where the context is full, whichever comes first
        self._limit = min(max_tokens, engine.n_ctx - len(prompt_ids))
        self._limit_reason = "max_tokens" if self._limit == max_tokens else "context_full"
        self.text = ""
        self.token_ids: list[int] = []
        self.stats: GenerationStats | None = None
        self._stream: Generator[str, None, None] | None = None

    def __iter__(self) -> Iterator[str]:
        if self._stream is not None:
            raise RuntimeError("a Generation can be iterated once")
        self._stream = self._run()
        return self._stream

    def close(self) -> None:
        """End a generation that was not iterated to its end (its .text and .stats are then final)."""
        if self._stream is not None:
            self._stream.close()

    def run(self) -> Generation:
        """Generate to the end without streaming."""
        for _ in self:
            pass
        return self

    def _run(self) -> Generator[str, None, None]:
        engine, chain = self._engine, self._chain
        ctx, vocab = engine._llama.ctx, engine._vocab
        decode, sample, is_eog = llama_cpp.llama_decode, llama_cpp.llama_sampler_sample, llama_cpp.llama_vocab_is_eog
        stop_ids, eos_id, piece, limit = engine.stop_ids, engine.eos_id, engine.piece, self._limit
        feed, native_call = TextStream().feed, interrupts.native_call
        one = (llama_cpp.llama_token * 1)()
        batch = llama_cpp.llama_batch_get_one(one, 1)
        ids, parts = self.token_ids, []
        reason, n_sampled, t_first, t_last = "interrupted", 0, 0.0, 0.0
        watch = MemoryWatch().__enter__()
        t0 = time.perf_counter()
        try:
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
            engine._decode(self._prompt_ids)
            token = sample(chain, ctx, -1)
            t_first = t_last = time.perf_counter()
            n_sampled = 1
            while True:
                if token in stop_ids or is_eog(vocab, token):
                    reason = "eos" if token == eos_id else "stop_token"
                    break
                ids.append(token)
                text = feed(piece(token))
                if text:
                    parts.append(text)
                    yield text
                if len(ids) >= limit:
                    reason = self._limit_reason
                    break
                one[0] = token
                with native_call():  # Ctrl-C during the decode aborts it and raises KeyboardInterrupt here
                    rc = decode(ctx, batch)
                if rc != 0:
                    raise GGUFError("llama.cpp failed to decode a token (context full?)", "lower --max-tokens")
                token = sample(chain, ctx, -1)
                n_sampled += 1
                t_last = time.perf_counter()
            tail = feed(b"", final=True)
            if tail:
                parts.append(tail)
                yield tail
        finally:
            t_end = time.perf_counter()
            watch.__exit__(None, None, None)
            llama_cpp.llama_sampler_free(chain)
            self.text = "".join(parts)
            ttft_s = (t_first or t_end) - t0
            decode_s = (t_last - t_first) if n_sampled > 1 else 0.0
            self.stats = GenerationStats(
                prompt_tokens=len(self._prompt_ids),
                ttft_s=ttft_s,
                prompt_tokens_per_s=len(self._prompt_ids) / ttft_s if ttft_s > 0 else 0.0,
                gen_tokens=n_sampled,
                gen_tokens_per_s=(n_sampled - 1) / decode_s if decode_s > 0 else 0.0,
                total_s=t_end - t0,
                stop_reason=reason,
                peak_rss_bytes=watch.peak_rss_bytes,
                peak_anon_bytes=watch.peak_anon_bytes,
            )
