"""The one wrapper around llama-cpp-python: loading a GGUF, tokenizing, and streamed generation with stop ids.

`llama_cpp.Llama` is created here and nowhere else. It owns the model and context; generation drives the C API
directly (llama_decode on a one-token batch + a llama_sampler chain), which keeps Python's per-token work to one
decode, one sample, a set lookup and a cached piece (Llama.generate costs 3-5 % against llama-bench:
runner/generation.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import llama_cpp
import numpy as np

from qrun import interrupts, registry, settings
from qrun.errors import GGUFError, UsageError
from qrun.gguf_file import GGUFHeader, read_header
from qrun.registry import ModelSpec
from qrun.runner import cpu_probe, formats, spm_plain
from qrun.runner.generation import Generation, TextStream  # noqa: F401 (re-exported for callers)

# ggml_log_level in the vendored ggml.h: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (llama_cpp/_logger.py's
# table predates DEBUG and is off by one).
_GGML_LOG_ERROR = 4


@llama_cpp.llama_log_callback
def _log_after_load(_level, text, _user_data) -> None:
    """llama.cpp's log once a model is loaded: silent (qrun reports its own errors in one line), all of it with
    QRUN_DEBUG. llama-cpp-python's own logger would print llama.cpp's warnings, e.g. the "removing memory module
    entries" line of every interrupted decode, as its level table is off by one (see above)."""
    if settings.debug() and text:
        sys.stderr.write(text.decode("utf-8", errors="replace"))


@contextlib.contextmanager
def _captured_llama_log() -> Iterator[list[str]]:
    """Collect llama.cpp's error lines instead of printing anything; then keep it quiet (_log_after_load)."""
    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def _collect(level, text, _user_data):
        if level == _GGML_LOG_ERROR and text:
            line = text.decode("utf-8", errors="replace").strip()
            # "llama_model_load: error loading model: <reason>" -> "<reason>"; drop the generic follow-up lines
            reason = line.split(": error loading model: ", 1)[-1]
            if "failed to load model" not in reason:
                lines.append(reason)

    llama_cpp.llama_log_set(_collect, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        llama_cpp.llama_log_set(_log_after_load, ctypes.c_void_p(0))


@contextlib.contextmanager
def _model_params(**fields) -> Iterator[None]:
    """Set llama_model_params fields that Llama() has no argument for (llama-cpp-python 0.3.36 builds its params
    from llama_model_default_params(), looked up on the module at call time)."""
    import llama_cpp.llama_cpp as low

    original = low.llama_model_default_params

    def patched():
        params = original()
        for name, value in fields.items():
            setattr(params, name, value)
        return params

    low.llama_model_default_params = patched
    try:
        yield
    finally:
        low.llama_model_default_params = original


# llama.cpp polls these during its long calls (after every graph node of a decode, and while loading) and stops when
# they say so; qrun.interrupts explains why that is what makes Ctrl-C take effect within a second. The abort callback
# is set only while a prompt is evaluated: a one-token decode is short (a fraction of a second on a 7B), and calling
# Python after each graph node cost 2.6 % of generation speed on a small model, nothing measurable on a 7B
# (docs/performance.md, "The cost of making Ctrl-C work inside llama.cpp").
@llama_cpp.ggml_abort_callback
def _abort_decode(_user_data) -> bool:
    return interrupts.abort_requested()


_NO_ABORT = llama_cpp.ggml_abort_callback()
_KV_GGML_TYPES = {
    "f16": llama_cpp.GGML_TYPE_F16,
    "q8_0": llama_cpp.GGML_TYPE_Q8_0,
}  # a NULL function pointer: llama.cpp then polls nothing


@llama_cpp.llama_progress_callback
def _continue_loading(_progress, _user_data) -> bool:
    return not interrupts.abort_requested()


class _UnusedChatTemplate:
    """Stands in for llama-cpp-python's Jinja2ChatFormatter while a model loads: Llama() compiles every
    tokenizer.chat_template in a GGUF's metadata (llama_cpp/llama.py), and a template that does not compile would
    stop a model from loading whose prompts qrun builds itself (runner/formats.py) and never renders."""

    def __init__(self, **_template):
        pass

    def to_chat_handler(self):
        def refuse(**_kwargs):
            raise RuntimeError("qrun builds prompts itself (runner/formats.py); GGUF chat templates are not rendered")

        return refuse


@contextlib.contextmanager
def _chat_templates_not_compiled() -> Iterator[None]:
    import llama_cpp.llama as high_level

    formats_module = high_level.llama_chat_format
    original = formats_module.Jinja2ChatFormatter
    setattr(formats_module, "Jinja2ChatFormatter", _UnusedChatTemplate)  # noqa: B010 (a class mypy calls final)
    try:
        yield
    finally:
        setattr(formats_module, "Jinja2ChatFormatter", original)  # noqa: B010


def aligned_ctx(n_ctx: int) -> int:
    """n_ctx rounded up to llama.cpp's multiple (settings.CTX_ALIGN_TOKENS). llama.cpp rounds it anyway, and
    llama-cpp-python 0.3.36 sizes its buffers from the unrounded value, then crashes (numpy broadcast error) on
    prompts that fall in the gap — so only multiples are ever passed."""
    align = settings.CTX_ALIGN_TOKENS
    return -(-n_ctx // align) * align


# llama.cpp's sampler seeds are uint32, and LLAMA_DEFAULT_SEED (0xFFFFFFFF, llama.h) means "a random seed": -1 would
# become it, and 2**32 + n the same draw as n, so a seed outside this range never reproduces what it says.
MAX_SEED = 0xFFFFFFFE


def check_seed(seed: int) -> None:
    """Raises UsageError for a --seed llama.cpp cannot reproduce (see MAX_SEED)."""
    if not 0 <= seed <= MAX_SEED:
        raise UsageError(f"--seed must be from 0 to {MAX_SEED}, got {seed}", "e.g. --seed 42")


def check_sampling(*, max_tokens: int, temperature: float, top_p: float, top_k: int) -> None:
    """Raises UsageError for a sampling option that cannot work."""
    if max_tokens < 1:
        raise UsageError(f"--max-tokens must be at least 1, got {max_tokens}")
    for flag, value in (("--temperature", temperature), ("--top-p", top_p)):
        if not -float("inf") < value < float("inf"):  # False for NaN and ±inf, which the checks below let through
            raise UsageError(f"{flag} must be a finite number, got {value}")
    if temperature < 0:
        raise UsageError(f"--temperature must be 0 (greedy) or more, got {temperature}")
    if not 0 < top_p <= 1:
        raise UsageError(f"--top-p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise UsageError(f"--top-k must be 0 (off) or more, got {top_k}")


def spec_for_header(header: GGUFHeader, path: Path, *, as_model: str | None = None) -> ModelSpec:
    """The model a GGUF holds: `as_model` when the user says so (--as), else the "qrun.model" key our converter
    writes. A GGUF from elsewhere is not guessed from general.architecture: "llama" is DeepSeek's architecture and
    that of thousands of other models, each with its own chat format, and a wrong format gives fluent nonsense.

    Raises:
        UnknownModelError: `as_model` is not a registry name.
        GGUFError: no (known) "qrun.model" key and no `as_model`, or an architecture qrun cannot run.
    """
    arch = header.architecture or ""
    if as_model is not None:
        spec = registry.get(as_model)
        if arch and arch != spec.gguf_arch:
            raise GGUFError(
                f"{path} holds architecture {arch!r}, not {spec.name}'s {spec.gguf_arch!r}",
                f"--as names the model the GGUF holds; qrun runs: {', '.join(registry.names())}",
            )
        return spec
    name = header.metadata.get("qrun.model")
    if isinstance(name, str) and name in registry.names():
        return registry.get(name)
    candidates = [spec.name for spec in registry.MODELS if spec.gguf_arch == arch]
    if not candidates:
        raise GGUFError(
            f"{path} holds architecture {arch!r}, which qrun has no chat format for",
            f"qrun runs: {', '.join(registry.names())}",
        )
    raise GGUFError(
        f"{path} was not made by `qrun convert` (no qrun.model key), so which model it holds and "
        f"which chat format it needs are unknown (architecture {arch!r})",
        f"say which it is with --as {candidates[0]} if it is {candidates[0]}; qrun runs: {', '.join(registry.names())}",
    )


class Engine:
    """A loaded GGUF. Create with Engine.load(); close() frees it."""

    def __init__(
        self,
        llama,
        *,
        path: Path,
        spec: ModelSpec,
        header: GGUFHeader,
        load_s: float,
        n_ctx_requested: int,
        load_settings: settings.LoadSettings,
    ):
        self._llama = llama
        self._vocab = llama_cpp.llama_model_get_vocab(llama.model)
        self.path, self.spec, self.header, self.load_s = path, spec, header, load_s
        self.amx_denied = False  # set by load(): repacked with the AVX-512/AVX2 kernels because AMX traps here
        self.settings = load_settings  # what llama.cpp got (load() records the context as allocated)
        self.n_ctx_requested = n_ctx_requested
        self.n_ctx = llama_cpp.llama_n_ctx(llama.ctx)
        # a vocab_only load reads no hyperparameters (llama.cpp reports 0): the GGUF header still says it
        self.n_ctx_train = llama_cpp.llama_model_n_ctx_train(llama.model) or header.context_length or 0
        self.n_batch = llama.n_batch
        self._pieces: dict[int, bytes] = {}
        self._specials: dict[str, int] = {}
        self._is_spm = llama_cpp.llama_vocab_type(self._vocab) == llama_cpp.LLAMA_VOCAB_TYPE_SPM
        self._spm_pieces: dict[str, tuple[int, float]] | None = None
        self.stop_ids = frozenset(self.token_id(text) for text in spec.stop_tokens)
        self.eos_id = llama_cpp.llama_vocab_eos(self._vocab)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)

    @classmethod
    def load(
        cls,
        gguf_path,
        load: settings.LoadSettings | None = None,
        *,
        seed: int = settings.DEFAULT_SEED,
        vocab_only: bool = False,
        notice: Callable[[str], None] = lambda _msg: None,
        as_model: str | None = None,
        **given,
    ) -> Engine:
        """Validate and load a GGUF with `load` applied as it is (qrun.runner.resolve builds it).

        Args:
            load: the resolved load settings; None = LoadSettings.default(**given), e.g. Engine.load(path,
                n_ctx=256, n_threads=1) in tests and tools that load one file directly.
            vocab_only: load only the vocabulary (for --show-prompt and context sizing: no weights read).
            notice: where one-line notes go (e.g. that the repacking check is running).
            as_model: the model a GGUF not made by `qrun convert` holds (spec_for_header).
        Raises:
            GGUFError: missing, truncated or non-GGUF file, or llama.cpp's reason for refusing it.
            UsageError: n_ctx < 1 or above the model's training context; q8_0 KV cache without flash attention.
        """
        load = load or settings.LoadSettings.default(**given)
        path = Path(gguf_path)
        header = read_header(path)
        spec = spec_for_header(header, path, as_model=as_model)
        n_ctx = load.n_ctx
        if n_ctx is None:
            n_ctx = min(settings.DEFAULT_CTX_TOKENS, header.context_length or settings.DEFAULT_CTX_TOKENS)
        if n_ctx < 1:
            raise UsageError(f"--ctx must be at least 1 token, got {n_ctx}")
        if header.context_length and n_ctx > header.context_length:
            # no rope scaling is configured: past its training length the model's output degrades silently
            raise UsageError(
                f"--ctx {n_ctx} is more than the {header.context_length} tokens {spec.name} was trained on",
                f"use --ctx {header.context_length} or less",
            )
        if load.kv_type not in settings.KV_TYPES:
            raise UsageError(f"unknown KV cache type {load.kv_type!r}", f"use one of: {', '.join(settings.KV_TYPES)}")
        if load.kv_type != "f16" and not load.flash_attn:
            # llama.cpp refuses a quantized V cache without flash attention (llama_init_from_model)
            raise UsageError(f"--kv-type {load.kv_type} needs flash attention", "add --flash-attn")
        try:
            str(path).encode("utf-8")  # llama-cpp-python passes the path to llama.cpp as UTF-8 (llama_cpp/llama.py)
        except UnicodeEncodeError:
            raise GGUFError(
                f"llama.cpp cannot open {path}: its name is not UTF-8",
                "rename the file (or link it under a UTF-8 name)",
            ) from None
        repack = load.repack and not vocab_only
        amx_denied = False
        if repack:
            verdict = cpu_probe.check_repack(system_info(), notice=notice)
            amx_denied = verdict.get("amx_denied", False)
            if amx_denied:
                notice(
                    "note: AMX is denied to this process (llama.cpp's AMX kernels crash on this machine); "
                    "repacking uses its AVX-512/AVX2 kernels"
                )
        kv_ggml_type = _KV_GGML_TYPES[load.kv_type]
        interrupts.install()
        t0 = time.perf_counter()
        with (
            _captured_llama_log() as log_lines,
            interrupts.native_call(),
            _chat_templates_not_compiled(),
            _model_params(use_extra_bufts=repack, progress_callback=_continue_loading),
        ):
            try:
                llama = llama_cpp.Llama(
                    str(path),
                    n_ctx=aligned_ctx(n_ctx),
                    n_batch=min(512, aligned_ctx(n_ctx)),
                    n_threads=load.n_threads,
                    n_threads_batch=load.n_threads_batch,
                    seed=seed,
                    use_mmap=load.use_mmap,
                    flash_attn=load.flash_attn,
                    type_k=kv_ggml_type,
                    type_v=kv_ggml_type,
                    vocab_only=vocab_only,
                    verbose=False,
                )
            except (ValueError, RuntimeError) as err:
                reason = "; ".join(line for line in log_lines if line) or str(err)
                raise GGUFError(
                    f"llama.cpp could not load {path}: {reason}",
                    "use a GGUF made by `qrun convert` (or re-create this one)",
                ) from None
        load_s = time.perf_counter() - t0
        engine = cls(
            llama, path=path, spec=spec, header=header, load_s=load_s, n_ctx_requested=n_ctx, load_settings=load
        )
        engine.amx_denied = amx_denied
        # what llama.cpp really got: the context as allocated (a multiple of CTX_ALIGN_TOKENS), repacking as applied
        engine.settings = load.with_value("n_ctx", engine.n_ctx, load.sources.get("n_ctx", "default")).with_value(
            "repack", repack, load.sources.get("repack", "default")
        )
        return engine

    def close(self) -> None:
        self._llama.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- vocabulary ----------------------------------------------------------------------------------------------
    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        out = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(self._vocab, data, len(data), out, capacity, False, special)
        if n < 0:  # cannot happen with one token per byte at most, but llama.cpp says how many it needs
            out = (llama_cpp.llama_token * -n)()
            n = llama_cpp.llama_tokenize(self._vocab, data, len(data), out, -n, False, special)
        ids = list(out[:n])
        if not special and self._is_spm and any(self._is_control(i) for i in ids):
            ids = spm_plain.encode(text, self._plain_pieces())  # see spm_plain: ChatGLM3's "sop" typed as text
        return ids

    def _is_control(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_get_attr(self._vocab, token) & llama_cpp.LLAMA_TOKEN_ATTR_CONTROL)

    def _plain_pieces(self) -> dict[str, tuple[int, float]]:
        if self._spm_pieces is None:
            get_text, get_score = llama_cpp.llama_vocab_get_text, llama_cpp.llama_vocab_get_score
            self._spm_pieces = {
                get_text(self._vocab, i).decode("utf-8", errors="replace"): (i, get_score(self._vocab, i))
                for i in range(llama_cpp.llama_vocab_n_tokens(self._vocab))
                if not self._is_control(i)
            }
        return self._spm_pieces

    def token_text(self, token: int) -> str:
        return (llama_cpp.llama_vocab_get_text(self._vocab, token) or b"").decode("utf-8", errors="replace")

    def token_id(self, special_text: str) -> int:
        """The id of a special token named by its text (e.g. "<|im_end|>").

        Raises:
            GGUFError: the vocabulary has no such token.
        """
        if special_text not in self._specials:
            ids = self.tokenize(special_text, special=True)
            if len(ids) == 1 and self.token_text(ids[0]) == special_text:
                self._specials[special_text] = ids[0]
            else:  # a special stored as a normal token: look it up, specials sit at the end of the vocabulary
                n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
                found = next((i for i in range(n_vocab - 1, -1, -1) if self.token_text(i) == special_text), None)
                if found is None:
                    raise GGUFError(
                        f"{self.path.name}'s vocabulary has no token {special_text!r}",
                        f"it is not a {self.spec.name} GGUF made by `qrun convert`",
                    )
                self._specials[special_text] = found
        return self._specials[special_text]

    def piece(self, token: int) -> bytes:
        """The bytes a token contributes to the answer (control tokens: none)."""
        data = self._pieces.get(token)
        if data is None:
            buf = ctypes.create_string_buffer(64)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, 64, 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, -n, 0, False)
            data = self._pieces[token] = buf.raw[:n]
        return data

    def shown_piece(self, token: int) -> bytes:
        """A token's bytes as a prompt shows it (llama.cpp's --verbose-prompt): control tokens as their text
        ("<|user|>"), a byte-fallback token as its one byte, SentencePiece's "▁" as a space."""
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, 64, 0, True)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, -n, 0, True)
        return buf.raw[:n]

    def detokenize(self, ids: Sequence[int]) -> str:
        """The text `ids` decode to in llama.cpp, control tokens written as their text and nothing stripped
        (ChatGLM3's "<|user|>" + "\n" segment decodes to "<|user|> \n": SentencePiece's leading "▁")."""
        arr = (llama_cpp.llama_token * len(ids))(*ids)
        size = 16 * len(ids) + 16
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_detokenize(self._vocab, arr, len(ids), buf, size, False, True)
        if n < 0:  # llama.cpp says how many bytes it needs
            size = -n
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_detokenize(self._vocab, arr, len(ids), buf, size, False, True)
        return buf.raw[:n].decode("utf-8", errors="replace")

    # -- prompts -------------------------------------------------------------------------------------------------
    def segments(self, messages: Sequence[dict], *, system: str | None = None) -> list:
        """system=None: the model's default system prompt (Qwen's), "" = none."""
        return formats.segments_for(
            self.spec.chat_format, messages, system=self.spec.default_system if system is None else system
        )

    def prompt_ids(self, messages: Sequence[dict], *, system: str | None = None) -> list[int]:
        return formats.token_ids(self.segments(messages, system=system), self)

    def prompt_text(self, messages: Sequence[dict], *, system: str | None = None) -> str:
        return formats.prompt_text(self.segments(messages, system=system))

    def raw_prompt_ids(self, text: str) -> list[int]:
        """A prompt with no chat format (a server's /v1/completions): the text as plain tokens, after BOS when the
        vocabulary says to add one (tokenizer.ggml.add_bos_token, which `qrun convert` always writes)."""
        ids = self.tokenize(text, special=False)
        if llama_cpp.llama_vocab_get_add_bos(self._vocab):
            ids.insert(0, llama_cpp.llama_vocab_bos(self._vocab))
        return ids

    # -- generation ----------------------------------------------------------------------------------------------
    def generate(
        self,
        prompt_ids: Sequence[int],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int = settings.DEFAULT_SEED,
        logit_bias: Mapping[int, float] | None = None,
    ) -> Generation:
        """Start generating after `prompt_ids` (the KV cache is cleared first: nothing is reused between calls).

        temperature 0 = greedy (reproducible); otherwise top-k (0 = off) -> top-p -> temperature -> seeded draw.
        logit_bias adds to chosen logits before sampling (tests use it to force a stop token).
        """
        check_sampling(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k)
        check_seed(seed)
        if not prompt_ids:
            raise UsageError("the prompt has no tokens")
        if len(prompt_ids) >= self.n_ctx:
            raise UsageError(f"the prompt is {len(prompt_ids)} tokens; the context holds {self.n_ctx}")
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        if logit_bias:
            biases = (llama_cpp.llama_logit_bias * len(logit_bias))(
                *(llama_cpp.llama_logit_bias(token=t, bias=b) for t, b in logit_bias.items())
            )
            n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
            llama_cpp.llama_sampler_chain_add(
                chain, llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(biases), biases)
            )
        if temperature == 0:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
        else:
            if top_k > 0:
                llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_k(top_k))
            if top_p < 1:
                llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_p(top_p, 1))
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_temp(temperature))
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(seed))
        return Generation(self, list(prompt_ids), chain, max_tokens=max_tokens)

    # -- scoring -------------------------------------------------------------------------------------------------
    def logits(self, token_ids: Sequence[int], *, first_position: int = 0) -> np.ndarray:
        """The model's next-token logits after each of token_ids[first_position:], as float32 [positions, n_vocab].

        Row i holds the logits after token_ids[first_position + i], i.e. the distribution of the token that
        follows it: log-probabilities of a continuation (quality's KL, eval's option letters) come from these rows.
        The KV cache is cleared first, so the result depends on token_ids alone. Memory: 4 bytes x n_vocab per
        row (Qwen's 151,936-token vocabulary: 0.6 MB a row), so callers score long texts window by window.

        Raises:
            UsageError: no tokens, first_position outside them, or more tokens than the context holds.
            KeyboardInterrupt: a signal during the evaluation (llama.cpp stops within a graph node).
        """
        n_tokens = len(token_ids)
        if n_tokens == 0:
            raise UsageError("nothing to score: no tokens")
        if not 0 <= first_position < n_tokens:
            raise UsageError(f"first_position {first_position} is outside the {n_tokens} tokens")
        if n_tokens > self.n_ctx:
            raise UsageError(f"{n_tokens} tokens do not fit the context of {self.n_ctx}", "raise --ctx")
        n_vocab = self.n_vocab
        out = np.empty((n_tokens - first_position, n_vocab), dtype=np.float32)
        ctx = self._llama.ctx
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
        batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        llama_cpp.llama_set_abort_callback(ctx, _abort_decode, None)
        try:
            for start in range(0, n_tokens, self.n_batch):
                chunk = token_ids[start : start + self.n_batch]
                for i, token in enumerate(chunk):
                    position = start + i
                    batch.token[i] = token
                    batch.pos[i] = position
                    batch.n_seq_id[i] = 1
                    batch.seq_id[i][0] = 0
                    batch.logits[i] = position >= first_position
                batch.n_tokens = len(chunk)
                with interrupts.native_call():
                    rc = llama_cpp.llama_decode(ctx, batch)
                if rc != 0:
                    raise GGUFError(
                        f"llama.cpp failed to evaluate the text (llama_decode returned {rc})", "lower --ctx"
                    )
                for i in range(max(0, first_position - start), len(chunk)):
                    row = llama_cpp.llama_get_logits_ith(ctx, i)
                    out[start + i - first_position] = np.ctypeslib.as_array(row, shape=(n_vocab,))
        finally:
            llama_cpp.llama_set_abort_callback(ctx, _NO_ABORT, None)
            llama_cpp.llama_batch_free(batch)
        return out

    def _decode(self, tokens: Sequence[int]) -> None:
        """Evaluate prompt tokens in n_batch chunks (positions continue from the KV cache); a signal meanwhile
        aborts llama.cpp within a graph node and is raised here as KeyboardInterrupt."""
        ctx = self._llama.ctx
        llama_cpp.llama_set_abort_callback(ctx, _abort_decode, None)
        try:
            for start in range(0, len(tokens), self.n_batch):
                chunk = tokens[start : start + self.n_batch]
                arr = (llama_cpp.llama_token * len(chunk))(*chunk)
                with interrupts.native_call():
                    rc = llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(arr, len(chunk)))
                if rc != 0:
                    raise GGUFError(
                        f"llama.cpp failed to evaluate the prompt (llama_decode returned {rc})",
                        "lower --ctx or the prompt length",
                    )
        finally:
            llama_cpp.llama_set_abort_callback(ctx, _NO_ABORT, None)


def system_info() -> str:
    """llama.cpp's description of its build (the CPU features it was compiled for), for bench's machine record.

    Used by qrun.runner.machine; it lives here because this module owns llama_cpp.
    """
    return llama_cpp.llama_print_system_info().decode("utf-8", errors="replace").strip()


def build_info() -> dict[str, str | None]:
    """Versions of the engine, for `qrun --version`: llama-cpp-python's, and llama.cpp's own (llama_version()), its
    ggml library's version and the commit it was built from (ggml_version(), ggml_commit() of ggml.h; None where a
    build does not export them)."""
    return {
        "llama_cpp_python": getattr(llama_cpp, "__version__", None),
        "llama_cpp": _c_string(llama_cpp.llama_cpp._lib, "llama_version"),
        "ggml": _c_string(llama_cpp.llama_cpp._lib, "ggml_version"),
        "commit": _c_string(llama_cpp.llama_cpp._lib, "ggml_commit"),
        "system_info": " ".join(system_info().split()),
    }


def _c_string(lib: ctypes.CDLL, name: str) -> str | None:
    """A `const char * name(void)` of the library or of the libraries it links (libllama links ggml)."""
    try:
        function = getattr(lib, name)
    except AttributeError:
        return None
    function.argtypes, function.restype = [], ctypes.c_char_p
    value = function()
    return value.decode("utf-8", errors="replace") if value else None
