"""`qrun quality`: how far each quant moves a model's next-token distribution on a Chinese text, against the
unquantized GGUF (BF16 or F16).

The reference runs once over the text (bench/quality_ref.py: windows, top-k cache); each quant then runs over the
same windows, and per scored token this module computes:

- KL(ref || quant) from the reference's top-k: sum over the reference's k most likely tokens of
  p_ref * (log p_ref - log p_quant), plus one bucket for all other tokens, p_rest_ref * log(p_rest_ref / p_rest_quant).
  This is the KL between the two distributions coarsened to k + 1 outcomes, so it is never negative and never more
  than the full-vocabulary KL (data processing inequality): a lower bound, which tightens as --top-k grows.
- top-1 agreement: the quant's most likely token is the reference's most likely token.
- the log-likelihood of the text's own next token under each model, hence both perplexities.

The results document, <out>/quality-<model>.json (one file per model, so several models share one --out folder),
holds that model's results for one reference, text, ctx and top-k; a run for other quants of the same setup keeps
the earlier quants' results beside its own. Its shape (the report reads any JSON file of this kind)::

    {"kind": "qrun-quality", "schema": 1, "model", "ctx_tokens", "top_k", "scored_tokens",
     "reference": {"quant", "gguf", "gguf_sha256", "cached", "windows_resumed", "top_k_mass_mean"},
     "text": {"name", "sha256", "tokens"},
     "results": [{"model", "quant", "gguf", "gguf_sha256", "size_bytes", "kl_mean", "kl_median", "kl_p99",
                  "top1_agreement", "ppl", "ref_ppl", "kl_chunk_min", "kl_chunk_max", "kl_chunk_stdev",
                  "windows_resumed", "chunks": [{"kl_mean", "top1_agreement", "loglik", "ref_loglik", "tokens"}]}]}

gguf_sha256 is the manifest's only when the manifest verifies for that very file (runner/ask.py gguf_sha256),
else hashed from the file.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import filelock
import numpy as np

from qrun import registry, settings
from qrun.errors import GGUFError, NotConvertedError, UsageError
from qrun.fsutil import ensure_writable_dir, os_reason, read_input_text, write_json_atomic
from qrun.gguf_file import read_header
from qrun.runner import resolve
from qrun.runner.ask import gguf_sha256
from qrun.runner.engine import Engine
from qrun.text import utf8_problem

from . import quality_ref
from .quality_ref import ROWS_PER_BLOCK, Reference, log_softmax, rest_logprob, window_rows, windows

SCHEMA = 1
KIND = "qrun-quality"
# llama-perplexity's default context (-c 512): half of each window, 255 tokens, is scored.
DEFAULT_CTX_TOKENS = 512
# 32 most likely tokens per position; raise it with --top-k for a tighter lower bound on the KL.
DEFAULT_TOP_K = 32
# Every vocabulary qrun runs has 64,000 tokens or more; 1,024 log-probabilities per token (8 KB) is plenty.
MAX_TOP_K = 1024
MIN_CTX_TOKENS = 8
DEFAULT_OUT_DIR = "bench-results"  # beside `qrun bench`'s results, for one report
TEXTS_DIR = Path(__file__).parent / "texts"
DEFAULT_TEXT = TEXTS_DIR / "zh_default.txt"
DEFAULT_TEXT_NAME = "zh_default"

Say = Callable[[str], None]


def _quiet(_message: str) -> None:
    pass


def results_name(model: str) -> str:
    """The results file of one model (its canonical name) in --out: quality-<model>.json."""
    return f"quality-{model}.json"


# -- inputs ----------------------------------------------------------------------------------------------------
def load_text(path: str | os.PathLike | None) -> tuple[str, str]:
    """(name, text) of --text, or of the packaged default text (its first line, which says where the text comes
    from, is not scored).

    Raises:
        UsageError: unreadable, not UTF-8, or empty.
    """
    if path is None:
        name, source = DEFAULT_TEXT_NAME, DEFAULT_TEXT
    else:
        name, source = Path(path).name, Path(path)
    try:
        text = read_input_text(source)
    except UnicodeDecodeError as err:
        raise UsageError(
            f"--text {source} is not UTF-8 text (byte {err.start + 1} of the file)", "save it as UTF-8"
        ) from None
    except OSError as err:
        raise UsageError(f"cannot read --text {source}: {os_reason(err)}", "give a readable text file") from None
    problem = utf8_problem(text)
    if problem:
        raise UsageError(f"--text {source} is not valid UTF-8 text: {problem}", "save it as UTF-8")
    if path is None:
        text = text.split("\n", 1)[1]
    if not text.strip():
        raise UsageError(f"--text {source} is empty", "give a text of a few thousand tokens")
    return name, text


def check_options(*, ctx: int, top_k: int) -> None:
    if ctx < MIN_CTX_TOKENS:
        raise UsageError(
            f"--ctx must be at least {MIN_CTX_TOKENS} tokens, got {ctx}", f"e.g. --ctx {DEFAULT_CTX_TOKENS}"
        )
    if not 1 <= top_k <= MAX_TOP_K:
        raise UsageError(f"--top-k must be from 1 to {MAX_TOP_K}, got {top_k}", f"e.g. --top-k {DEFAULT_TOP_K}")


def parse_quants(value: str | None) -> list[str] | None:
    """ "q4_0,Q4_K_M" -> ["Q4_0", "Q4_K_M"]; None or "" -> None (every converted type)."""
    if value is None or not value.strip():
        return None
    quants = [settings.check_quant(part) for part in value.split(",") if part.strip()]
    return list(dict.fromkeys(quants))


def reference_gguf(model: str, ref: str | None, ggufs_dir) -> tuple[str, Path]:
    """(type, path) of the reference: --ref, else BF16 when converted, else F16.

    Raises:
        UsageError: --ref is not a known type. NotConvertedError: no such GGUF.
    """
    folder = settings.gguf_dir(ggufs_dir)
    if ref is not None:
        quant = settings.check_quant(ref)
        return quant, resolve.gguf_for(model, quant=quant, ggufs_dir=ggufs_dir)
    for quant in ("BF16", "F16"):
        path = folder / f"{model}-{quant}.gguf"
        if path.is_file():
            return quant, path
    raise NotConvertedError(
        f"{model} has no unquantized GGUF to compare against (no {model}-BF16.gguf or {model}-F16.gguf in {folder})",
        f"run `qrun convert {model} --quant BF16` (F16 for a float16 checkpoint), or name one with --ref",
    )


def quant_ggufs(model: str, quants: list[str] | None, ref_quant: str, ggufs_dir) -> list[tuple[str, Path]]:
    """(type, path) of each quant to score: those asked for, else every converted type but the reference."""
    if quants is not None:
        return [(q, resolve.gguf_for(model, quant=q, ggufs_dir=ggufs_dir)) for q in quants]
    folder = settings.gguf_dir(ggufs_dir)
    found = [(q, folder / f"{model}-{q}.gguf") for q in settings.QUANTS if q != ref_quant]
    found = [(q, path) for q, path in found if path.is_file()]
    if not found:
        raise NotConvertedError(
            f"{model} has no GGUF to compare with its {ref_quant} in {folder}",
            f"run `qrun convert {model} --quant {settings.DEFAULT_QUANT}`",
        )
    return found


# -- loading -----------------------------------------------------------------------------------------------------
def _load(path: Path, *, ctx: int, threads, threads_batch, vocab_only: bool = False) -> Engine:
    """A GGUF loaded the same way for the reference and every quant: f16 KV cache and no flash attention (a
    quantized KV cache would move the logits it is meant to measure), no tuning profile."""
    gguf, load = resolve.resolve(
        path,
        threads=threads,
        threads_batch=threads_batch,
        ctx=ctx,
        kv_type="f16",
        flash_attn=False,
        use_profile=False,
    )
    return Engine.load(gguf, load, vocab_only=vocab_only)


def _tokens(engine: Engine, text: str) -> np.ndarray:
    return np.asarray(engine.tokenize(text), dtype=np.int32)


# -- metrics -----------------------------------------------------------------------------------------------------
def topk_kl(ref_top: np.ndarray, ref_rest: np.ndarray, quant_top: np.ndarray, quant_rest: np.ndarray) -> np.ndarray:
    """KL(ref || quant) per row over the reference's top-k tokens plus the rest bucket (see the module docstring).

    Args: log-probabilities, [rows, k] of the same token ids and [rows] of the mass outside them.
    """
    ref_top, ref_rest = ref_top.astype(np.float64), ref_rest.astype(np.float64)
    top = (np.exp(ref_top) * (ref_top - quant_top)).sum(axis=1)
    has_rest = np.isfinite(ref_rest)
    with np.errstate(invalid="ignore"):
        rest = np.where(has_rest, np.exp(ref_rest) * (ref_rest - quant_rest), 0.0)
    # a KL is never negative: below 0 is float rounding of near-equal distributions (-6e-11 for the reference itself)
    return np.maximum(top + rest, 0.0)


SCORE_ROWS = ("kl", "agree", "loglik")  # per scored token: KL, top-1 agreement, the quant's log-likelihood


def score_quant(
    engine: Engine,
    ref: Reference,
    *,
    say: Say = _quiet,
    done: dict[str, np.ndarray] | None = None,
    keep: Callable[[dict[str, np.ndarray]], None] | None = None,
) -> dict:
    """Per scored token KL, agreement and log-likelihood of one quant against the reference, summed up.

    Args:
        done: the rows of the first windows from an interrupted run (whole windows); those windows are skipped.
        keep: called after each window with the rows of the windows finished so far.
    Returns:
        {kl_mean, kl_median, kl_p99, top1_agreement, ppl, ref_ppl, kl_chunk_min, kl_chunk_max, kl_chunk_stdev,
         windows_resumed, chunks: [{kl_mean, top1_agreement, loglik, ref_loglik, tokens}]}
    """
    bounds = windows(len(ref.tokens), ref.ctx)
    n_scored = len(ref.top_ids)
    kl = np.empty(n_scored)
    agree = np.empty(n_scored, dtype=bool)
    loglik = np.empty(n_scored)
    targets = ref.targets()
    row = n_done = 0
    if done is not None:
        row = len(done["kl"])
        n_done = row // (n_scored // len(bounds))
        kl[:row], agree[:row], loglik[:row] = done["kl"], done["agree"], done["loglik"]
        say(f"[quality] {engine.path.name}: windows 1-{n_done} from an interrupted run, not computed again")
    for number, (start, end) in enumerate(bounds[n_done:], n_done + 1):
        say(f"[quality] {engine.path.name}: window {number}/{len(bounds)}")
        logits = window_rows(engine, ref.tokens, start, end)
        for block in range(0, len(logits), ROWS_PER_BLOCK):
            logprobs = log_softmax(logits[block : block + ROWS_PER_BLOCK])
            rows = slice(row + block, row + block + len(logprobs))
            ids = ref.top_ids[rows]
            quant_top = np.take_along_axis(logprobs, ids, axis=1)
            kl[rows] = topk_kl(ref.top_logprobs[rows], ref.rest_logprob[rows], quant_top, rest_logprob(logprobs, ids))
            agree[rows] = logprobs.argmax(axis=1) == ids[:, 0]
            loglik[rows] = logprobs[np.arange(len(logprobs)), targets[rows]]
        row += len(logits)
        if keep is not None:
            keep({"kl": kl[:row], "agree": agree[:row], "loglik": loglik[:row]})
    per_window = n_scored // len(bounds)
    ref_loglik = ref.target_logprob.astype(np.float64)
    chunks = []
    for i in range(len(bounds)):
        part = slice(i * per_window, (i + 1) * per_window)
        chunks.append(
            {
                "kl_mean": float(kl[part].mean()),
                "top1_agreement": float(agree[part].mean()),
                "loglik": float(loglik[part].sum()),
                "ref_loglik": float(ref_loglik[part].sum()),
                "tokens": per_window,
            }
        )
    chunk_kl = np.array([c["kl_mean"] for c in chunks])
    return {
        "kl_mean": float(kl.mean()),
        "kl_median": float(np.median(kl)),
        "kl_p99": float(np.percentile(kl, 99)),
        "top1_agreement": float(agree.mean()),
        "ppl": math.exp(-float(loglik.sum()) / n_scored),
        "ref_ppl": math.exp(-float(ref_loglik.sum()) / n_scored),
        "kl_chunk_min": float(chunk_kl.min()),
        "kl_chunk_max": float(chunk_kl.max()),
        "kl_chunk_stdev": float(chunk_kl.std(ddof=1)) if len(chunks) > 1 else 0.0,
        "windows_resumed": n_done,
        "chunks": chunks,
    }


# -- resuming a quant's scores ------------------------------------------------------------------------------------
def scores_resume(ref_key: dict, quant_sha256: str, *, label: str) -> tuple[Path, dict]:
    """(file, key) keeping the scored windows of one quant against one reference cache (its key: the reference, the
    text, ctx and k), in the reference cache's folder; the file is removed once the results file is written."""
    key = {"schema": SCHEMA, "reference": ref_key, "quant_sha256": quant_sha256}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return quality_ref.cache_dir() / f"{label}-{digest}.scores.resume", key


def write_scores(path: Path, key: dict, rows: dict[str, np.ndarray]) -> None:
    try:
        quality_ref.write_npz(path, {"key": np.array(json.dumps(key, sort_keys=True)), **rows})
    except OSError as err:
        raise UsageError(
            f"cannot write {path}: {os_reason(err)}", "free space there, or set QRUN_HOME to a writable folder"
        ) from None


def read_scores(path: Path, key: dict, ref: Reference) -> dict[str, np.ndarray] | None:
    """The rows of the windows an interrupted run scored for `key`; None when there is no such file, or it is of
    another key, unreadable or not whole windows (then every window is scored)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if json.loads(str(data["key"])) != key:
                return None
            rows = {name: data[name] for name in SCORE_ROWS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    n_rows, per_window = len(rows["kl"]), quality_ref.scored_per_window(ref.ctx)
    whole = 0 < n_rows <= len(ref.top_ids) and n_rows % per_window == 0
    return rows if whole and all(rows[name].shape == (n_rows,) for name in SCORE_ROWS) else None


# -- the command -------------------------------------------------------------------------------------------------
def _setup(doc: dict) -> tuple:
    """What makes two quality documents' results comparable: model, reference file, text, ctx, top-k."""
    reference, text = doc.get("reference"), doc.get("text")
    return (
        doc.get("kind"),
        doc.get("schema"),
        doc.get("model"),
        reference.get("gguf_sha256") if isinstance(reference, dict) else None,
        text.get("sha256") if isinstance(text, dict) else None,
        doc.get("ctx_tokens"),
        doc.get("top_k"),
    )


def _earlier_results(path: Path, doc: dict, *, force: bool) -> list[dict]:
    """Results of other quants from the model's earlier results file of the same reference, text, ctx and top-k.

    Raises:
        UsageError: that file holds results of another setup (and not --force).
    """
    try:
        earlier = json.loads(read_input_text(path))
    except FileNotFoundError:
        return []
    except (OSError, ValueError):
        earlier = None
    if not isinstance(earlier, dict) or earlier.get("kind") != KIND:
        if force:
            return []
        raise UsageError(
            f"{path} is not a readable `qrun quality` results file (damaged, not JSON, or something else)",
            "move it out of the --out folder, or add --force to replace it",
        )
    if _setup(earlier) == _setup(doc):
        return [r for r in earlier.get("results", []) if isinstance(r, dict)]
    if force:
        return []
    held = earlier.get("model")
    raise UsageError(
        f"{path} holds {'results of ' + str(held) if held else 'other results'} for another reference, text, "
        "--ctx or --top-k",
        "use another --out folder, or --force to replace them",
    )


def quality(
    model: str,
    *,
    quants: list[str] | None = None,
    ref: str | None = None,
    text: str | os.PathLike | None = None,
    ctx: int = DEFAULT_CTX_TOKENS,
    top_k: int = DEFAULT_TOP_K,
    ggufs_dir=None,
    out_dir: str | os.PathLike = DEFAULT_OUT_DIR,
    threads: int | None = None,
    threads_batch: int | None = None,
    force: bool = False,
    say: Say = _quiet,
) -> dict:
    """Score each quant of `model` against its unquantized GGUF on a text; write and return
    <out>/quality-<model>.json.

    Args:
        quants: types to score; None = every converted type but the reference.
        ref: the reference type; None = BF16 when converted, else F16.
        text: a UTF-8 text file; None = the packaged Chinese text (bench/texts/zh_default.txt).
        ctx: tokens per window (the second half of each is scored).
        top_k: reference log-probabilities kept per scored token.
        threads / threads_batch: llama.cpp threads (None or 0: QRUN_THREADS, then the physical cores).
        force: replace the model's results file in `out_dir` when it holds another setup.
    Returns:
        The document written to quality-<model>.json (its shape: the module docstring), plus "results_path".
    Raises:
        QrunError subclasses for every bad input, before anything is computed or written.
    """
    check_options(ctx=ctx, top_k=top_k)
    spec = registry.get(model)
    text_name, text_body = load_text(text)
    quant_list = None if quants is None else parse_quants(",".join(quants))
    ref_quant, ref_path = reference_gguf(spec.name, ref, ggufs_dir)
    targets = quant_ggufs(spec.name, quant_list, ref_quant, ggufs_dir)
    n_ctx_train = read_header(ref_path).context_length  # the quants' too: Engine.load checks each again
    if n_ctx_train and ctx > n_ctx_train:
        raise UsageError(
            f"--ctx {ctx} is more than the {n_ctx_train} tokens {spec.name} was trained on",
            f"use --ctx {n_ctx_train} or less",
        )
    with _load(ref_path, ctx=ctx, threads=threads, threads_batch=threads_batch, vocab_only=True) as vocab:
        tokens = _tokens(vocab, text_body)
    if len(tokens) < ctx:
        raise UsageError(
            f"the text has {len(tokens)} tokens, fewer than one --ctx window of {ctx}",
            "give a longer --text, or lower --ctx",
        )
    text_sha256 = hashlib.sha256(text_body.encode("utf-8")).hexdigest()
    out = Path(out_dir)
    results_path = out / results_name(spec.name)
    ref_sha256 = gguf_sha256(ref_path)
    doc: dict = {
        "kind": KIND,
        "schema": SCHEMA,
        "model": spec.name,
        "reference": {"quant": ref_quant, "gguf": str(ref_path), "gguf_sha256": ref_sha256},
        "text": {"name": text_name, "sha256": text_sha256, "tokens": int(len(tokens))},
        "ctx_tokens": ctx,
        "top_k": top_k,
        "scored_tokens": 0,
        "results": [],
    }
    ensure_writable_dir(out, what="--out folder", hint="choose a writable folder with --out DIR")
    _earlier_results(results_path, doc, force=force)  # refuse a folder of another setup before the long work

    key = quality_ref.cache_key(gguf_sha256=ref_sha256, text_sha256=text_sha256, ctx=ctx, top_k=top_k)
    reference = quality_ref.reference(
        lambda: _load(ref_path, ctx=ctx, threads=threads, threads_batch=threads_batch),
        lambda _engine: tokens,
        key=key,
        label=ref_path.stem,
        say=say,
    )
    if not np.array_equal(reference.tokens, tokens):  # a cache of another tokenizer build under the same key
        raise GGUFError(f"the cached tokens of {ref_path.name} differ from its tokenizer's", "delete the cache folder")
    doc["reference"]["cached"] = reference.cached
    doc["reference"]["windows_resumed"] = reference.windows_resumed  # finished by an interrupted run, not redone
    # how tight the top-k KL bound is: near 1 the rest bucket is small and the bound close to the full KL
    doc["reference"]["top_k_mass_mean"] = float(np.exp(reference.top_logprobs.astype(np.float64)).sum(axis=1).mean())
    doc["scored_tokens"] = int(len(reference.top_ids))

    results, kept_scores = [], []
    for quant, path in targets:
        quant_sha256 = gguf_sha256(path)
        # each window's rows are kept until the results file is written: an interrupted run resumes them
        scores_path, scores_key = scores_resume(key, quant_sha256, label=path.stem)
        with quality_ref.locked(scores_path, say=say):
            with _load(path, ctx=ctx, threads=threads, threads_batch=threads_batch) as engine:
                if not np.array_equal(_tokens(engine, text_body), tokens):
                    raise GGUFError(
                        f"{path.name} tokenizes the text differently from {ref_path.name}",
                        f"compare GGUFs of the same model made by `qrun convert {spec.name}`",
                    )
                scores = score_quant(
                    engine,
                    reference,
                    say=say,
                    done=read_scores(scores_path, scores_key, reference),
                    keep=functools.partial(write_scores, scores_path, scores_key),
                )
        kept_scores.append(scores_path)
        results.append(
            {
                "model": spec.name,
                "quant": quant,
                "gguf": str(path),
                "gguf_sha256": quant_sha256,
                "size_bytes": path.stat().st_size,
                **scores,
            }
        )
    try:
        # locked: two runs for other quants of the same setup each keep the other's results
        with filelock.FileLock(out / f".{results_path.name}.lock"):
            done = {r["quant"] for r in results}
            kept = [r for r in _earlier_results(results_path, doc, force=force) if r.get("quant") not in done]
            order = {q: i for i, q in enumerate(settings.QUANTS)}
            doc["results"] = sorted(kept + results, key=lambda r: order.get(r.get("quant"), len(order)))
            write_json_atomic(results_path, doc)
    except OSError as err:
        raise UsageError(
            f"cannot write {results_path}: {os_reason(err)}", "free space there, or choose another --out"
        ) from None
    for scores_path in kept_scores:
        with contextlib.suppress(FileNotFoundError):
            scores_path.unlink()
    doc["results_path"] = str(results_path)
    return doc
