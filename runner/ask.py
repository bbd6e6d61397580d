"""One question, one streamed answer: the library behind `qrun ask` (and what bench and demo call)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from qrun import registry, settings
from qrun.errors import PromptError, UsageError
from qrun.fsutil import sha256_file
from qrun.measure import MemoryWatch
from qrun.runner import resolve
from qrun.runner.engine import Engine, check_sampling, check_seed
from qrun.text import check_text

Notice = Callable[[str], None]


# LoadSettings keys -> the names ask's "settings" uses
_SETTING_NAMES = {"n_threads": "threads", "n_threads_batch": "threads_batch"}


def _quiet(_message: str) -> None:
    pass


def known_sha256(path: Path) -> str | None:
    """The GGUF's sha256 when its manifest holds it for the very file that is there (size, mtime, inode and ctime:
    convert/manifest.py check_manifest), else None; never reads the GGUF."""
    try:
        from qrun.convert.manifest import check_manifest

        check = check_manifest(path)
        if check.ok and check.manifest and check.manifest.get("sha256"):
            return check.manifest["sha256"]
    except ImportError:
        pass
    return None


def gguf_sha256(path: Path) -> str:
    """The GGUF's sha256: its manifest's (known_sha256), else computed from the file (reads all of it)."""
    return known_sha256(path) or sha256_file(path)


def check_prompt(prompt: str, *, system: str | None = None) -> None:
    """Raises PromptError for an empty prompt, or a prompt or system prompt that is not UTF-8 text."""
    if not prompt or not prompt.strip():
        raise PromptError("the prompt is empty", 'give a question, e.g. qrun ask qwen "你好"')
    check_text(prompt, what="the prompt")
    if system is not None:
        check_text(system, what="--system")


def check_options(*, max_tokens=None, temperature=None, top_p=None, top_k=None, seed=None) -> None:
    """Validate the sampling flags that were given, before any model is loaded."""
    if seed is not None:
        check_seed(seed)
    check_sampling(
        max_tokens=1 if max_tokens is None else max_tokens,
        temperature=temperature or 0.0,
        top_p=1.0 if top_p is None else top_p,
        top_k=top_k or 0,
    )


def answer_reserve(n_ctx: int, max_tokens: int) -> int:
    """Tokens kept free for the answer when a prompt or history is cut to fit: max_tokens, at most half the context."""
    return max(1, min(max_tokens, n_ctx // 2))


def fit_prompt(
    engine: Engine, prompt: str, *, system: str | None, max_tokens: int, truncate: bool, notice: Notice
) -> list[int]:
    """The prompt's ids; an overlong prompt raises, or with truncate loses its oldest part (with a notice)."""
    messages = [{"role": "user", "content": prompt}]
    ids = engine.prompt_ids(messages, system=system)
    if len(ids) < engine.n_ctx:
        return ids
    if not truncate:
        raise PromptError(
            f"the prompt is {len(ids)} tokens but the context holds {engine.n_ctx} "
            f"(at most {engine.n_ctx - 1} prompt tokens)",
            f"shorten it, raise --ctx (the model was trained on {engine.n_ctx_train}), "
            "or pass --truncate to drop its beginning",
        )
    budget = engine.n_ctx - answer_reserve(engine.n_ctx, max_tokens)
    frame = len(engine.prompt_ids([{"role": "user", "content": ""}], system=system))
    if frame > budget:
        raise PromptError(
            f"the system prompt and chat format alone take {frame} of {engine.n_ctx} tokens",
            "shorten --system or raise --ctx",
        )
    lo, hi = 1, len(prompt)  # smallest cut (characters dropped from the start) that fits
    while lo < hi:
        mid = (lo + hi) // 2
        if len(engine.prompt_ids([{"role": "user", "content": prompt[mid:]}], system=system)) <= budget:
            hi = mid
        else:
            lo = mid + 1
    kept = engine.prompt_ids([{"role": "user", "content": prompt[lo:]}], system=system)
    notice(
        f"note: the prompt was {len(ids)} tokens; dropped its first {lo} characters to fit "
        f"{len(kept)} tokens into the {engine.n_ctx}-token context"
    )
    return kept


def sampling_options(spec: registry.ModelSpec, *, max_tokens, temperature, top_p, top_k) -> dict:
    """Flags over the model's own generation defaults (registry), validated."""
    defaults = spec.generation
    options: dict = dict(
        max_tokens=defaults.max_tokens if max_tokens is None else max_tokens,
        temperature=defaults.temperature if temperature is None else temperature,
        top_p=defaults.top_p if top_p is None else top_p,
        top_k=defaults.top_k if top_k is None else top_k,
    )
    check_sampling(**options)
    return options


def load_engine(
    model_or_path,
    *,
    threads=None,
    threads_batch=None,
    repack=None,
    use_mmap=None,
    ctx=None,
    quant=None,
    ggufs_dir=None,
    flash_attn=None,
    kv_type=None,
    seed=settings.DEFAULT_SEED,
    vocab_only=False,
    work: Callable[[Engine], int] | None = None,
    notice: Notice = _quiet,
    workload: str = "chat",
    as_model: str | None = None,
) -> Engine:
    """Resolve MODEL and its load settings (qrun.runner.resolve), size the context, load.

    work: given the vocabulary, the tokens the context must hold (prompt + answer); the context is then sized to
        it unless --ctx was given. None = --ctx, else settings.DEFAULT_CTX_TOKENS (a chat's history grows).
    as_model: which model a GGUF path not made by `qrun convert` holds (--as).
    engine.settings says what was loaded and where each value came from.
    """
    if as_model is not None and not resolve.is_path(model_or_path):
        raise UsageError(
            f"--as {as_model} names the model of a .gguf path; {model_or_path!r} is a model name",
            "drop --as, or give the path of the GGUF",
        )
    gguf, load = resolve.resolve(
        model_or_path,
        quant=quant,
        ggufs_dir=ggufs_dir,
        threads=threads,
        threads_batch=threads_batch,
        repack=repack,
        use_mmap=use_mmap,
        ctx=ctx,
        flash_attn=flash_attn,
        kv_type=kv_type,
        workload=workload,
        use_profile=not vocab_only,
        as_model=as_model,
        notice=notice,
    )
    if vocab_only:
        return Engine.load(gguf, load, seed=seed, vocab_only=True, notice=notice, as_model=as_model)
    if work is not None and load.sources.get("n_ctx") != "flag":
        with Engine.load(gguf, load, vocab_only=True, as_model=as_model) as vocab:
            load = resolve.size_ctx(load, work_tokens=work(vocab), n_ctx_train=vocab.n_ctx_train)
    engine = Engine.load(gguf, load, seed=seed, notice=notice, as_model=as_model)
    if ctx is not None and engine.n_ctx != ctx:
        notice(
            f"note: --ctx {ctx} rounded up to {engine.n_ctx} (llama.cpp allocates the context in multiples of "
            f"{settings.CTX_ALIGN_TOKENS})"
        )
    return engine


def show_prompt(model_or_path, prompt: str, *, system=None, quant=None, ggufs_dir=None, as_model=None) -> dict:
    """The exact prompt `ask` would run (only the vocabulary is loaded).

    Returns:
        {"prompt_text": the text the ids decode to in llama.cpp (control tokens as their text: ChatGLM3's
            "<|user|> \\n 你好", not the template's "<|user|>\\n你好"),
         "prompt_token_ids": [id, ...],
         "tokens": [{"id", "piece": its text (U+FFFD for a byte that is part of a character),
                     "piece_hex": its exact bytes}, ...] in prompt order}
    """
    check_prompt(prompt, system=system)
    with load_engine(model_or_path, quant=quant, ggufs_dir=ggufs_dir, vocab_only=True, as_model=as_model) as engine:
        ids = engine.prompt_ids([{"role": "user", "content": prompt}], system=system)
        pieces = [engine.shown_piece(token) for token in ids]
        return {
            "prompt_text": engine.detokenize(ids),
            "prompt_token_ids": ids,
            "tokens": [
                {"id": token, "piece": piece.decode("utf-8", errors="replace"), "piece_hex": piece.hex()}
                for token, piece in zip(ids, pieces)
            ],
        }


def ask(
    model_or_path,
    prompt: str,
    *,
    system: str | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    seed: int = settings.DEFAULT_SEED,
    threads: int | None = None,
    threads_batch: int | None = None,
    repack: bool | None = None,
    use_mmap: bool | None = None,
    ctx: int | None = None,
    flash_attn: bool | None = None,
    kv_type: str | None = None,
    quant: str | None = None,
    ggufs_dir=None,
    truncate: bool = False,
    with_sha256: bool = True,
    on_text: Callable[[str], None] | None = None,
    notice: Notice = _quiet,
    logit_bias=None,
    as_model: str | None = None,
) -> dict:
    """Answer one prompt with a converted model, streaming text pieces to on_text.

    Args:
        model_or_path: canonical name or alias (uses <ggufs>/<name>-<QUANT>.gguf) or a path to a .gguf.
        system: system prompt; None = the model's default (Qwen: "You are a helpful assistant.").
        max_tokens / temperature / top_p / top_k: None = the model's own defaults; temperature 0 = greedy.
        threads: None or 0 = physical cores. ctx: context tokens (rounded up to a multiple of 256); None = sized
            to the prompt + max_tokens.
        threads_batch / repack / use_mmap / flash_attn / kv_type: load settings (None: env, tuning profile, default;
            see qrun.runner.resolve).
        truncate: drop the oldest part of an overlong prompt instead of failing.
        with_sha256: include the GGUF's sha256 (from its manifest, else hashed: slow for a 4 GB file).
        as_model: which model a GGUF path not made by `qrun convert` holds (--as).
    Returns:
        {"answer", "model", "gguf", "sha256", "stats": {load_s, prompt_tokens, ..., stop_reason, peak_rss_bytes},
         "settings": {quant, threads, threads_batch, repack, use_mmap, n_ctx, flash_attn, kv_type, amx_denied, seed,
                      max_tokens, temperature, top_p, top_k,
                      "source": {load setting: "flag" | "env" | "profile" | "work" | "default"}}}
    Raises:
        QrunError subclasses for every bad input (see qrun.errors).
    """
    check_prompt(prompt, system=system)
    check_options(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)

    def work(vocab: Engine) -> int:  # the prompt as the model will see it, and room for the whole answer
        answer = sampling_options(vocab.spec, max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k)[
            "max_tokens"
        ]
        return len(vocab.prompt_ids([{"role": "user", "content": prompt}], system=system)) + answer

    with MemoryWatch() as load_watch:
        engine = load_engine(
            model_or_path,
            threads=threads,
            threads_batch=threads_batch,
            repack=repack,
            use_mmap=use_mmap,
            ctx=ctx,
            quant=quant,
            ggufs_dir=ggufs_dir,
            flash_attn=flash_attn,
            kv_type=kv_type,
            seed=seed,
            work=work,
            notice=notice,
            as_model=as_model,
        )
    with engine:
        options = sampling_options(
            engine.spec, max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k
        )
        ids = fit_prompt(
            engine, prompt, system=system, max_tokens=options["max_tokens"], truncate=truncate, notice=notice
        )
        generation = engine.generate(ids, seed=seed, logit_bias=logit_bias, **options)
        for text in generation:
            if on_text:
                on_text(text)
        assert generation.stats is not None  # set when the generation ends
        stats = generation.stats.to_dict()
        load = engine.settings.to_dict()
        stats["peak_rss_bytes"] = max(stats["peak_rss_bytes"], load_watch.peak_rss_bytes)
        stats["peak_anon_bytes"] = max(stats["peak_anon_bytes"], load_watch.peak_anon_bytes)
        return {
            "answer": generation.text,
            "model": engine.spec.name,
            "gguf": str(engine.path),
            "sha256": gguf_sha256(engine.path) if with_sha256 else None,
            "stats": {"load_s": engine.load_s, **stats},
            "settings": {
                **{_SETTING_NAMES.get(k, k): v for k, v in load.items() if k != "source"},
                "amx_denied": engine.amx_denied,
                "seed": seed,
                **options,
                "source": {_SETTING_NAMES.get(k, k): v for k, v in load["source"].items()},
            },
        }
