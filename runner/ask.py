"""One question, one streamed answer: the library behind `qrun ask` (and what bench and demo call)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from qrun import registry, settings
from qrun.errors import NotConvertedError, PromptError, UsageError
from qrun.fsutil import sha256_file
from qrun.measure import MemoryWatch
from qrun.runner.engine import Engine, check_sampling

Notice = Callable[[str], None]


# load_choice keys (Engine.load's) -> the names ask's "settings" uses
_SETTING_NAMES = {"n_threads": "threads", "n_threads_batch": "threads_batch"}


def _quiet(_message: str) -> None:
    pass


def resolve_gguf(model_or_path: str | os.PathLike, *, quant: str | None = None,
                 ggufs_dir: str | os.PathLike | None = None) -> Path:
    """A model name/alias -> <ggufs>/<name>-<QUANT>.gguf; anything that looks like a path is used as it is.

    Raises:
        UnknownModelError: neither a path nor a known model name.
        NotConvertedError: a known model without a GGUF of that quant (names the `qrun convert` command to run).
    """
    text = str(model_or_path)
    if _is_path(text):
        return Path(text).expanduser()
    spec = registry.get(text)
    quant = settings.check_quant(quant or settings.DEFAULT_QUANT)
    folder = settings.gguf_dir(ggufs_dir)
    path = folder / f"{spec.name}-{quant}.gguf"
    if not path.is_file():
        command = f"qrun convert {spec.name}"
        if quant != settings.DEFAULT_QUANT:
            command += f" --quant {quant}"
        if ggufs_dir:
            command += f" --out {folder}"
        raise NotConvertedError(f"{spec.name} is not converted to {quant} yet (no {path})", f"run `{command}`")
    return path


def _is_path(model_or_path) -> bool:
    text = str(model_or_path)
    return text.lower().endswith(".gguf") or os.sep in text or Path(text).is_file()


def gguf_sha256(path: Path) -> str:
    """The GGUF's sha256: its manifest's only when the file is the very one the manifest was written for (size,
    mtime, inode and ctime: convert/manifest.py check_manifest), else computed from the file (reads all of it)."""
    try:
        from qrun.convert.manifest import check_manifest

        check = check_manifest(path)
        if check.ok and check.manifest.get("sha256"):
            return check.manifest["sha256"]
    except ImportError:
        pass
    return sha256_file(path)


def check_prompt(prompt: str) -> None:
    if not prompt or not prompt.strip():
        raise PromptError("the prompt is empty", "give a question, e.g. qrun ask qwen \"你好\"")


def check_threads(threads: int | None, *, flag: str = "--threads") -> int:
    """threads None or 0 = settings.default_threads() (physical cores)."""
    if threads is None or threads == 0:
        return settings.default_threads()
    if threads < 0:
        raise UsageError(f"{flag} must be at least 1 (0 = physical cores), got {threads}")
    return threads


def check_ctx(ctx: int | None) -> None:
    if ctx is not None and ctx < 1:
        raise UsageError(f"--ctx must be at least 1 token, got {ctx}")


def check_options(*, max_tokens=None, temperature=None, top_p=None, top_k=None) -> None:
    """Validate the sampling flags that were given, before any model is loaded."""
    check_sampling(max_tokens=1 if max_tokens is None else max_tokens, temperature=temperature or 0.0,
                   top_p=1.0 if top_p is None else top_p, top_k=top_k or 0)


def answer_reserve(n_ctx: int, max_tokens: int) -> int:
    """Tokens kept free for the answer when a prompt or history is cut to fit: max_tokens, at most half the context."""
    return max(1, min(max_tokens, n_ctx // 2))


def fit_prompt(engine: Engine, prompt: str, *, system: str | None, max_tokens: int, truncate: bool,
               notice: Notice) -> list[int]:
    """The prompt's ids; an overlong prompt raises, or with truncate loses its oldest part (with a notice)."""
    messages = [{"role": "user", "content": prompt}]
    ids = engine.prompt_ids(messages, system=system)
    if len(ids) < engine.n_ctx:
        return ids
    if not truncate:
        raise PromptError(f"the prompt is {len(ids)} tokens but the context holds {engine.n_ctx} "
                          f"(at most {engine.n_ctx - 1} prompt tokens)",
                          f"shorten it, raise --ctx (the model was trained on {engine.n_ctx_train}), "
                          "or pass --truncate to drop its beginning")
    budget = engine.n_ctx - answer_reserve(engine.n_ctx, max_tokens)
    frame = len(engine.prompt_ids([{"role": "user", "content": ""}], system=system))
    if frame > budget:
        raise PromptError(f"the system prompt and chat format alone take {frame} of {engine.n_ctx} tokens",
                          "shorten --system or raise --ctx")
    lo, hi = 1, len(prompt)  # smallest cut (characters dropped from the start) that fits
    while lo < hi:
        mid = (lo + hi) // 2
        if len(engine.prompt_ids([{"role": "user", "content": prompt[mid:]}], system=system)) <= budget:
            hi = mid
        else:
            lo = mid + 1
    kept = engine.prompt_ids([{"role": "user", "content": prompt[lo:]}], system=system)
    notice(f"note: the prompt was {len(ids)} tokens; dropped its first {lo} characters to fit "
           f"{len(kept)} tokens into the {engine.n_ctx}-token context")
    return kept


def sampling_options(spec: registry.ModelSpec, *, max_tokens, temperature, top_p, top_k) -> dict:
    """Flags over the model's own generation defaults (registry), validated."""
    defaults = spec.generation
    options = dict(
        max_tokens=defaults.max_tokens if max_tokens is None else max_tokens,
        temperature=defaults.temperature if temperature is None else temperature,
        top_p=defaults.top_p if top_p is None else top_p,
        top_k=defaults.top_k if top_k is None else top_k,
    )
    check_sampling(**options)
    return options


def load_engine(model_or_path, *, threads=None, threads_batch=None, repack=None, use_mmap=None, ctx=None, quant=None,
                ggufs_dir=None, seed=settings.DEFAULT_SEED, vocab_only=False, notice: Notice = _quiet,
                workload: str = "chat", as_model: str | None = None) -> Engine:
    """Resolve MODEL, validate --threads/--ctx, load; a --ctx that llama.cpp would round is rounded with a notice.

    threads_batch: threads for prompt processing (None/0 = same as threads); repack: llama.cpp's CPU weight
    repacking; use_mmap: map the GGUF instead of reading it into memory. Each None setting comes from QRUN_*,
    then the tuning profile's `workload` entry (qrun.bench.profile), then the default; engine.load_choice says
    which ({"values", "sources"}). as_model: which model a GGUF path not made by `qrun convert` holds (--as).
    """
    if as_model is not None and not _is_path(model_or_path):
        raise UsageError(f"--as {as_model} names the model of a .gguf path; {model_or_path!r} is a model name",
                         "drop --as, or give the path of the GGUF")
    check_threads(threads)
    if threads_batch:
        check_threads(threads_batch, flag="--threads-batch")
    check_ctx(ctx)
    if vocab_only:  # --show-prompt reads no weights: load settings do not matter
        values = {"quant": quant, "n_threads": check_threads(threads), "n_threads_batch": check_threads(threads),
                  "repack": False, "use_mmap": True}
        sources = {}
    else:
        from qrun.bench import profile

        values, sources = profile.resolve(model_or_path, quant=quant, ggufs_dir=ggufs_dir, threads=threads,
                                          threads_batch=threads_batch, repack=repack, use_mmap=use_mmap,
                                          workload=workload, notice=notice)
    engine = Engine.load(resolve_gguf(model_or_path, quant=values["quant"], ggufs_dir=ggufs_dir), n_ctx=ctx,
                         n_threads=values["n_threads"], n_threads_batch=values["n_threads_batch"],
                         repack=values["repack"], use_mmap=values["use_mmap"], seed=seed, vocab_only=vocab_only,
                         notice=notice, as_model=as_model)
    engine.load_choice = {"values": values, "sources": sources}
    if ctx is not None and engine.n_ctx != ctx:
        notice(f"note: --ctx {ctx} rounded up to {engine.n_ctx} (llama.cpp allocates the context in multiples of "
               f"{settings.CTX_ALIGN_TOKENS})")
    return engine


def show_prompt(model_or_path, prompt: str, *, system=None, quant=None, ggufs_dir=None, as_model=None) -> dict:
    """The exact prompt text and token ids `ask` would run (only the vocabulary is loaded)."""
    check_prompt(prompt)
    with load_engine(model_or_path, quant=quant, ggufs_dir=ggufs_dir, vocab_only=True, as_model=as_model) as engine:
        messages = [{"role": "user", "content": prompt}]
        return {"prompt_text": engine.prompt_text(messages, system=system),
                "prompt_token_ids": engine.prompt_ids(messages, system=system)}


def ask(model_or_path, prompt: str, *, system: str | None = None, max_tokens: int | None = None,
        temperature: float | None = None, top_p: float | None = None, top_k: int | None = None,
        seed: int = settings.DEFAULT_SEED, threads: int | None = None, threads_batch: int | None = None,
        repack: bool | None = None, use_mmap: bool | None = None, ctx: int | None = None,
        quant: str | None = None, ggufs_dir=None, truncate: bool = False, with_sha256: bool = True,
        on_text: Callable[[str], None] | None = None, notice: Notice = _quiet, logit_bias=None,
        as_model: str | None = None) -> dict:
    """Answer one prompt with a converted model, streaming text pieces to on_text.

    Args:
        model_or_path: canonical name or alias (uses <ggufs>/<name>-<QUANT>.gguf) or a path to a .gguf.
        system: system prompt; None = the model's default (Qwen: "You are a helpful assistant.").
        max_tokens / temperature / top_p / top_k: None = the model's own defaults; temperature 0 = greedy.
        threads: None or 0 = physical cores. ctx: context tokens (rounded up to a multiple of 256).
        threads_batch / repack / use_mmap: load settings, see load_engine() (None: env, tuning profile, default).
        truncate: drop the oldest part of an overlong prompt instead of failing.
        with_sha256: include the GGUF's sha256 (from its manifest, else hashed: slow for a 4 GB file).
        as_model: which model a GGUF path not made by `qrun convert` holds (--as).
    Returns:
        {"answer", "model", "gguf", "sha256", "stats": {load_s, prompt_tokens, ..., stop_reason, peak_rss_bytes},
         "settings": {n_ctx, quant, threads, threads_batch, repack, use_mmap, seed, max_tokens, temperature, top_p,
                      top_k, "source": {load setting: "flag" | "env" | "profile" | "default"}}}
    Raises:
        QrunError subclasses for every bad input (see qrun.errors).
    """
    check_prompt(prompt)
    check_threads(threads)
    check_ctx(ctx)
    check_options(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k)
    with MemoryWatch() as load_watch:
        engine = load_engine(model_or_path, threads=threads, threads_batch=threads_batch, repack=repack,
                             use_mmap=use_mmap, ctx=ctx, quant=quant, ggufs_dir=ggufs_dir, seed=seed, notice=notice,
                             as_model=as_model)
    with engine:
        options = sampling_options(engine.spec, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                   top_k=top_k)
        ids = fit_prompt(engine, prompt, system=system, max_tokens=options["max_tokens"], truncate=truncate,
                         notice=notice)
        generation = engine.generate(ids, seed=seed, logit_bias=logit_bias, **options)
        for text in generation:
            if on_text:
                on_text(text)
        stats = generation.stats.to_dict()
        chosen = engine.load_choice["values"]
        stats["peak_rss_bytes"] = max(stats["peak_rss_bytes"], load_watch.peak_rss_bytes)
        stats["peak_anon_bytes"] = max(stats["peak_anon_bytes"], load_watch.peak_anon_bytes)
        return {
            "answer": generation.text,
            "model": engine.spec.name,
            "gguf": str(engine.path),
            "sha256": gguf_sha256(engine.path) if with_sha256 else None,
            "stats": {"load_s": engine.load_s, **stats},
            "settings": {"n_ctx": engine.n_ctx, "quant": chosen["quant"], "threads": chosen["n_threads"],
                         "threads_batch": chosen["n_threads_batch"], "repack": chosen["repack"],
                         "amx_denied": engine.amx_denied, "use_mmap": chosen["use_mmap"], "seed": seed, **options,
                         "source": {_SETTING_NAMES.get(k, k): v for k, v in engine.load_choice["sources"].items()}},
        }
