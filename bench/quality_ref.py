"""The reference side of `qrun quality`: the windows a text is scored in, the reference GGUF's top-k
log-probabilities per scored token, and the cache file that keeps them until the reference or the text changes.

Windows follow llama-perplexity (tools/perplexity/perplexity.cpp in llama.cpp): the tokens are cut into windows of
`ctx` tokens, each evaluated from an empty KV cache, and only the second half of each window is scored, so every
scored token has at least ctx/2 tokens of context. A window of ctx tokens scores ctx - 1 - ctx // 2 tokens: the
logits after positions ctx//2 .. ctx-2, each predicting the next token of the window.

The cache is one .npz per (reference sha256, text sha256, ctx, k): int32 token ids and float32 log-probabilities
(4 + 4 bytes x k per scored token; 2,000 scored tokens at k = 32 take 0.5 MB). It is written atomically under a
lock, so two runs never compute into one file and a reader never sees half of one.

Interrupted work resumes: while the reference runs, the windows finished so far are kept beside the cache file in
`<cache name>.resume` (the same arrays, rows of whole windows only), rewritten atomically after each window under
the cache's lock. A run that finds it for the same key and tokens continues from the next window; the finished
cache file is the same, byte for byte, as an uninterrupted run's (the npz members carry a fixed timestamp).
bench/quality.py keeps each quant's scored windows the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import filelock
import numpy as np

from qrun import settings
from qrun.errors import UsageError
from qrun.fsutil import atomic_open, os_reason
from qrun.runner.engine import Engine

CACHE_SCHEMA = 1
# Rows of log-softmax computed at once in float64: 64 rows of Qwen's 151,936-token vocabulary are 78 MB.
ROWS_PER_BLOCK = 64

Say = Callable[[str], None]


def windows(n_tokens: int, ctx: int) -> list[tuple[int, int]]:
    """(start, end) token offsets of the whole windows of `ctx` tokens; a tail shorter than ctx is not scored."""
    return [(start, start + ctx) for start in range(0, n_tokens - ctx + 1, ctx)]


def first_scored(ctx: int) -> int:
    """Position in a window whose logits are the first scored (they predict the token after it)."""
    return ctx // 2


def scored_per_window(ctx: int) -> int:
    return ctx - 1 - first_scored(ctx)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float64 log-probabilities of each row."""
    rows = logits.astype(np.float64)
    rows -= rows.max(axis=1, keepdims=True)
    rows -= np.log(np.exp(rows).sum(axis=1, keepdims=True))
    return rows


def rest_logprob(logprobs: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """log of the probability mass outside `ids` per row ([rows, k]), summed over the other tokens themselves
    (1 - sum(top-k) loses every digit when the top-k hold nearly all the mass); -inf when nothing is left."""
    masked = logprobs.copy()
    np.put_along_axis(masked, ids, -np.inf, axis=1)
    peak = masked.max(axis=1, keepdims=True)
    finite = np.where(np.isfinite(peak), peak, 0.0)
    with np.errstate(divide="ignore"):
        return (finite + np.log(np.exp(masked - finite).sum(axis=1, keepdims=True)))[:, 0]


@dataclass(frozen=True)
class Reference:
    """What the reference GGUF says about each scored token (rows in text order, window after window)."""

    tokens: np.ndarray  # int32 [n_tokens]: the whole text as the reference's vocabulary tokenizes it
    top_ids: np.ndarray  # int32 [scored, k]: the k most likely next tokens, most likely first
    top_logprobs: np.ndarray  # float32 [scored, k]
    rest_logprob: np.ndarray  # float32 [scored]: log of the mass outside the top k (-inf: none)
    target_logprob: np.ndarray  # float32 [scored]: log-probability of the token that follows in the text
    ctx: int
    top_k: int
    cached: bool = False  # read from the cache file, not computed by this run
    windows_resumed: int = 0  # windows read from an interrupted run's .resume file instead of computed

    @property
    def n_windows(self) -> int:
        return len(windows(len(self.tokens), self.ctx))

    def targets(self) -> np.ndarray:
        """int32 [scored]: the tokens that follow each scored position."""
        first = first_scored(self.ctx)
        return np.concatenate(
            [self.tokens[start + first + 1 : end] for start, end in windows(len(self.tokens), self.ctx)]
        )


def window_rows(engine: Engine, tokens: np.ndarray, start: int, end: int) -> np.ndarray:
    """The engine's float32 logits after each scored position of the window tokens[start:end]."""
    window = [int(t) for t in tokens[start : end - 1]]  # the last token is only ever predicted
    return engine.logits(window, first_position=first_scored(end - start))


ARRAYS = ("top_ids", "top_logprobs", "rest_logprob", "target_logprob")  # rows, one per scored token


def _window_arrays(logits: np.ndarray, targets: np.ndarray, top_k: int) -> dict[str, np.ndarray]:
    """The reference's rows of one window: top-k ids and log-probabilities, the rest, the text's next token."""
    parts: dict[str, list[np.ndarray]] = {name: [] for name in ARRAYS}
    for row in range(0, len(logits), ROWS_PER_BLOCK):
        logprobs = log_softmax(logits[row : row + ROWS_PER_BLOCK])
        top = np.argpartition(-logprobs, top_k - 1, axis=1)[:, :top_k]
        # most likely first; equal values by token id, as np.argmax breaks ties
        order = np.lexsort((top, -np.take_along_axis(logprobs, top, axis=1)), axis=1)
        top = np.take_along_axis(top, order, axis=1)
        parts["top_ids"].append(top.astype(np.int32))
        parts["top_logprobs"].append(np.take_along_axis(logprobs, top, axis=1).astype(np.float32))
        parts["rest_logprob"].append(rest_logprob(logprobs, top).astype(np.float32))
        block_targets = targets[row : row + ROWS_PER_BLOCK]
        parts["target_logprob"].append(logprobs[np.arange(len(block_targets)), block_targets].astype(np.float32))
    return {name: np.concatenate(arrays) for name, arrays in parts.items()}


def compute(
    engine: Engine,
    tokens: np.ndarray,
    *,
    ctx: int,
    top_k: int,
    say: Say,
    done: dict[str, np.ndarray] | None = None,
    keep: Callable[[int, dict[str, np.ndarray]], None] | None = None,
) -> Reference:
    """Run the reference engine over every window and keep its top-k log-probabilities per scored token.

    Args:
        done: the rows of the first windows from an interrupted run (whole windows); those windows are skipped.
        keep: called after each window but the last with (windows finished, their rows so far).
    """
    bounds = windows(len(tokens), ctx)
    first = first_scored(ctx)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in ARRAYS}
    n_done = 0
    if done is not None:
        n_done = len(done["top_ids"]) // scored_per_window(ctx)
        for name in ARRAYS:
            parts[name].append(done[name])
        say(f"[quality] reference {engine.path.name}: windows 1-{n_done} from an interrupted run, not computed again")
    for number, (start, end) in enumerate(bounds[n_done:], n_done + 1):
        say(f"[quality] reference {engine.path.name}: window {number}/{len(bounds)}")
        logits = window_rows(engine, tokens, start, end)
        rows = _window_arrays(logits, tokens[start + first + 1 : end], top_k)
        for name in ARRAYS:
            parts[name].append(rows[name])
        if keep is not None and number < len(bounds):
            keep(number, {name: np.concatenate(parts[name]) for name in ARRAYS})
    rows_all = {name: np.concatenate(parts[name]) for name in ARRAYS}
    return Reference(
        tokens=tokens.astype(np.int32),
        top_ids=rows_all["top_ids"],
        top_logprobs=rows_all["top_logprobs"],
        rest_logprob=rows_all["rest_logprob"],
        target_logprob=rows_all["target_logprob"],
        ctx=ctx,
        top_k=top_k,
        windows_resumed=n_done,
    )


# -- the cache file ------------------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """Where reference caches live: <qrun home>/quality-cache (QRUN_HOME, then ~/.cache/qrun)."""
    return settings.qrun_home() / "quality-cache"


def cache_key(*, gguf_sha256: str, text_sha256: str, ctx: int, top_k: int) -> dict:
    return {"schema": CACHE_SCHEMA, "gguf_sha256": gguf_sha256, "text_sha256": text_sha256, "ctx": ctx, "top_k": top_k}


def cache_path(folder: Path, key: dict, *, label: str) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return folder / f"{label}-{digest}.npz"


def read_cache(path: Path, key: dict) -> Reference | None:
    """The cached reference when `path` holds one for exactly `key`; None when missing, another key, or unreadable
    (then it is computed again and the file replaced)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if json.loads(str(data["key"])) != key:
                return None
            arrays = {
                name: data[name] for name in ("tokens", "top_ids", "top_logprobs", "rest_logprob", "target_logprob")
            }
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    ref = Reference(**arrays, ctx=key["ctx"], top_k=key["top_k"], cached=True)
    n_scored = ref.n_windows * scored_per_window(ref.ctx)
    shapes_ok = ref.top_ids.shape == ref.top_logprobs.shape == (n_scored, ref.top_k) and (
        ref.rest_logprob.shape == ref.target_logprob.shape == (n_scored,)
    )
    return ref if shapes_ok else None


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An .npz (what np.load reads) of `arrays` in this order, with a fixed timestamp on each member: the same
    arrays give the same bytes (np.savez stamps the current time), so a resumed run's cache equals an uninterrupted
    run's."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            member = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(member, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(array), allow_pickle=False)
    return buffer.getvalue()


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_open(path, "wb") as f:
        f.write(_npz_bytes(arrays))


def write_cache(path: Path, key: dict, ref: Reference) -> None:
    key_array = np.array(json.dumps(key, sort_keys=True))
    write_npz(path, {"key": key_array, "tokens": ref.tokens, **{name: getattr(ref, name) for name in ARRAYS}})


def resume_path(path: Path) -> Path:
    """The finished windows of an interrupted run computing the cache file `path`."""
    return path.with_name(f"{path.name}.resume")


def write_resume(path: Path, key: dict, tokens: np.ndarray, rows: dict[str, np.ndarray]) -> None:
    write_npz(resume_path(path), {"key": np.array(json.dumps(key, sort_keys=True)), "tokens": tokens, **rows})


def read_resume(path: Path, key: dict, tokens: np.ndarray) -> dict[str, np.ndarray] | None:
    """The rows of the windows an interrupted run finished for `key` and these very tokens; None when there is no
    such file, or it is of another key or text, unreadable or not whole windows (then every window is computed)."""
    try:
        with np.load(resume_path(path), allow_pickle=False) as data:
            if json.loads(str(data["key"])) != key or not np.array_equal(data["tokens"], tokens):
                return None
            rows = {name: data[name] for name in ARRAYS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    per_window, k = scored_per_window(key["ctx"]), key["top_k"]
    n_rows = len(rows["top_ids"])
    whole = 0 < n_rows < len(windows(len(tokens), key["ctx"])) * per_window and n_rows % per_window == 0
    shapes_ok = rows["top_ids"].shape == rows["top_logprobs"].shape == (n_rows, k) and (
        rows["rest_logprob"].shape == rows["target_logprob"].shape == (n_rows,)
    )
    return rows if whole and shapes_ok else None


@contextlib.contextmanager
def locked(path: Path, *, say: Say) -> Iterator[None]:
    """Hold the lock of one cache file: a second run for the same reference waits, then reads what the first wrote.
    An OS lock (flock), released by the kernel when its process dies, as convert/workspace.py's output_lock."""
    lock = filelock.FileLock(path.with_name(f".{path.name}.lock"))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            say(f"[quality] waiting: another qrun run is computing {path.name}")
            lock.acquire()
    except OSError as err:
        raise UsageError(
            f"cannot write the reference cache in {path.parent}: {os_reason(err)}",
            "set QRUN_HOME to a writable folder",
        ) from None
    try:
        yield
    finally:
        lock.release()


def reference(
    engine_for: Callable[[], Engine],
    tokenize: Callable[[Engine], np.ndarray],
    *,
    key: dict,
    label: str,
    say: Say,
    folder: Path | None = None,
) -> Reference:
    """The reference's top-k per scored token: from the cache when it holds `key`, else computed (the engine is
    loaded only then) and cached. The windows an interrupted run finished (its .resume file) are not computed again.

    Args:
        engine_for: loads the reference GGUF (called only on a cache miss).
        tokenize: the text's tokens with that engine's vocabulary.
        label: the cache file's name prefix (e.g. the reference GGUF's stem).
        folder: None = cache_dir().
    """
    path = cache_path(folder or cache_dir(), key, label=label)
    with locked(path, say=say):
        cached = read_cache(path, key)
        if cached is not None:
            _drop_resume(path)  # left by a run stopped between writing the cache and deleting it
            say(f"[quality] reference log-probabilities from the cache ({path})")
            return cached
        with engine_for() as engine:
            tokens = tokenize(engine)

            def keep(_windows_done: int, rows: dict[str, np.ndarray]) -> None:
                _writing(path, lambda: write_resume(path, key, tokens, rows))

            done = read_resume(path, key, tokens)
            ref = compute(engine, tokens, ctx=key["ctx"], top_k=key["top_k"], say=say, done=done, keep=keep)
        _writing(path, lambda: write_cache(path, key, ref))
        _drop_resume(path)
        return ref


def _writing(path: Path, write: Callable[[], None]) -> None:
    try:
        write()
    except OSError as err:
        raise UsageError(
            f"cannot write the reference cache {path}: {os_reason(err)}",
            "free space there, or set QRUN_HOME to a writable folder",
        ) from None


def _drop_resume(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        resume_path(path).unlink()
