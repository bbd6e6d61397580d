"""Fetch the files conversion needs from ModelScope (default) or Hugging Face, and nothing else.

Both hub libraries keep their own cache (ModelScope: MODELSCOPE_CACHE or ~/.cache/modelscope; Hugging Face:
HF_HUB_CACHE or ~/.cache/huggingface/hub), resume interrupted files, and show tqdm progress on stderr; qrun uses
them as they are, so a checkpoint already fetched by other tools is reused. QRUN_OFFLINE=1 (or HF_HUB_OFFLINE=1 for
Hugging Face) resolves from those caches without touching the network, and so does a hub that does not answer
within PROBE_TIMEOUT_S: either way a missing copy is one error line at once, not the hub clients' retries.
"""

from __future__ import annotations

import errno
import json
import os
import queue
import socket
import sys
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from qrun import progress, settings
from qrun.errors import DiskSpaceError, DownloadError, UsageError
from qrun.fsutil import os_reason
from qrun.registry import ModelSpec

SOURCES = ("modelscope", "hf")
PROBE_TIMEOUT_S = 1.5  # a hub that opens no connection in this time is taken as unreachable
# ModelScope's client tries modelscope.cn, then modelscope.ai (modelscope_hub.constants DEFAULT_ENDPOINT and
# DEFAULT_INTL_ENDPOINT)
_MODELSCOPE_DEFAULT_ENDPOINTS = ("https://modelscope.cn", "https://www.modelscope.ai")


def _disk_full(exc: BaseException | None) -> bool:
    """ENOSPC anywhere in the exception chain (hub libraries wrap the OSError in their own errors)."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


_HUB_NAMES = {"modelscope": "ModelScope", "hf": "Hugging Face"}

SAFETENSORS_PATTERNS = ("*.safetensors", "model.safetensors.index.json")
# Only when a repo has no safetensors: pickle checkpoints, read by the converter's allow-listed unpickler.
PICKLE_PATTERNS = ("pytorch_model*.bin", "pytorch_model.bin.index.json")


def base_patterns(spec: ModelSpec) -> list[str]:
    """Config and tokenizer files of a model (its weights are matched separately)."""
    return sorted({"config.json", "generation_config.json", "tokenizer_config.json", *spec.tokenizer_files})


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    hub: str  # "modelscope" | "hf"
    repo_id: str
    requested_revision: str | None
    # The snapshot actually used: Hugging Face's commit hash; ModelScope's snapshot folder name (the branch, tag or
    # commit asked for, "master" by default: its cache layout does not record the commit a branch resolved to).
    revision: str | None

    def to_source(self) -> dict:
        data = asdict(self)
        data["path"] = str(self.path)
        return {"kind": "hub", **data}


def offline() -> bool:
    return settings.env_bool("QRUN_OFFLINE")


def _repo_id(spec: ModelSpec, source: str) -> str:
    return spec.modelscope_id if source == "modelscope" else spec.hf_id


def _snapshot(source: str, repo_id: str, *, revision: str | None, patterns: list[str], cache_dir, local_only: bool):
    if source == "hf":
        import huggingface_hub

        return huggingface_hub.snapshot_download(
            repo_id, revision=revision, allow_patterns=patterns, cache_dir=cache_dir, local_files_only=local_only
        )
    from modelscope.hub.snapshot_download import snapshot_download

    return snapshot_download(
        repo_id, revision=revision, allow_patterns=patterns, cache_dir=cache_dir, local_files_only=local_only
    )


def hub_error_summary(exc: BaseException, limit: int = 200) -> str:
    """A hub library's error as a clause for an error line: whitespace folded, and when too long cut at a word
    boundary before any bracket it leaves open, ending in "...". The clients' messages run to several hundred
    characters (urllib3's "HTTPSConnectionPool(host=...): Max retries exceeded ... (Caused by NameResolutionError(...
    ))"); a plain cut would end the line mid-word inside a parenthesis."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) <= limit:
        return text
    cut = text[: limit - 3]
    cut = cut[: cut.rfind(" ")] if " " in cut else cut
    opened: list[int] = []  # positions of brackets not yet closed
    for i, char in enumerate(cut):
        if char in "([{":
            opened.append(i)
        elif char in ")]}" and opened:
            opened.pop()
    if opened:
        cut = cut[: opened[0]]
    cut = cut.rstrip(" ,;:-(") or type(exc).__name__
    return cut + "..."


def missing_weight_files(folder: Path) -> list[str]:
    """Weight files a snapshot folder still lacks: index entries not on disk, or ["*.safetensors"] if none at all."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError):
                return [index_name]
            return [name for name in shards if not (folder / name).is_file()]
    if any(folder.glob("*.safetensors")) or any(folder.glob("pytorch_model*.bin")):
        return []
    return ["*.safetensors"]


def download_checkpoint(
    spec: ModelSpec,
    *,
    source: str = "modelscope",
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_only: bool | None = None,
) -> DownloadResult:
    """Fetch config, tokenizer and weight files of `spec` from a hub into that hub library's cache.

    Safetensors shards (+ index) are fetched when the repo has them; pickle `.bin` files only when it has none.
    Offline (QRUN_OFFLINE=1, HF_HUB_OFFLINE=1 for Hugging Face, or a hub that does not answer a connection within
    PROBE_TIMEOUT_S) the hub library resolves from its cache in its own offline mode (local_files_only): ModelScope's
    client would otherwise retry an unreachable hub for ~20 s, printing a warning per retry, before failing.

    Args:
        spec: the model.
        source: "modelscope" or "hf".
        revision: branch, tag or commit to pin; None = the hub's default branch.
        cache_dir: override the hub library's cache folder.
        local_only: resolve from the local cache only; None = QRUN_OFFLINE (or HF_HUB_OFFLINE for "hf").

    Returns:
        DownloadResult with the snapshot folder and the revision used.

    Raises:
        UsageError: unknown source.
        DownloadError: the hub could not be reached, the repo or revision does not exist, or files are missing.
    """
    if source not in SOURCES:
        raise UsageError(f"unknown source {source!r}", f"use one of: {', '.join(SOURCES)}")
    repo_id = _repo_id(spec, source)
    hub = _HUB_NAMES[source]
    where = f"{repo_id} from {hub}" + (f" at revision {revision}" if revision else "")
    print(f"[download] {where} (only config, tokenizer and weight files)", file=sys.stderr, flush=True)
    access = hub_access(source, local_only)
    unreachable, local, other = access.unreachable, access.local_only, access.other_source

    def not_cached() -> DownloadError:
        return access.not_cached(where, "convert a local copy with --from DIR")

    def fetch(patterns: list[str]) -> Path:
        try:
            with progress.plain_hub_bars():  # the hub's own bars; whole lines when stderr is a log
                return Path(
                    _snapshot(
                        source, repo_id, revision=revision, patterns=patterns, cache_dir=cache_dir, local_only=local
                    )
                )
        except Exception as exc:  # any failure of the hub library: network, auth, missing repo/revision, disk
            if _disk_full(exc):
                raise DiskSpaceError(
                    f"the disk filled up while downloading {where}: {hub_error_summary(exc)}",
                    "free space (a 7B checkpoint is 12-15 GB) or point HF_HOME / MODELSCOPE_CACHE "
                    "at a bigger disk, then rerun: the download resumes",
                ) from exc
            if local:
                raise not_cached() from exc
            if source == "modelscope":
                cached = _cached_modelscope(repo_id, revision=revision, patterns=patterns, cache_dir=cache_dir)
                if cached is not None:
                    reason = hub_error_summary(exc)
                    print(
                        f"[download] {hub} unreachable ({reason}); using the complete cached copy {cached}",
                        file=sys.stderr,
                        flush=True,
                    )
                    return cached
            raise DownloadError(
                f"could not download {where}: {hub_error_summary(exc)}",
                f"check the network and the model id/revision, or convert a local copy with --from DIR, or try {other}",
            ) from exc

    folder = fetch([*base_patterns(spec), *SAFETENSORS_PATTERNS])
    if not any(folder.glob("*.safetensors")):
        folder = fetch([*base_patterns(spec), *PICKLE_PATTERNS])
    missing = [name for name in ("config.json",) if not (folder / name).is_file()] + missing_weight_files(folder)
    if missing and unreachable is not None:
        raise not_cached()
    if missing:
        raise DownloadError(
            f"the {hub} snapshot of {repo_id} in {folder} lacks {', '.join(missing)}",
            "rerun to resume the download, or check that the repo id and revision are right",
        )
    if unreachable is not None:
        print(
            f"[download] {hub} unreachable ({unreachable}); using the complete cached copy {folder}",
            file=sys.stderr,
            flush=True,
        )
    used = folder.name if folder.parent.name == "snapshots" else revision
    return DownloadResult(path=folder, hub=source, repo_id=repo_id, requested_revision=revision, revision=used)


@dataclass(frozen=True)
class HubAccess:
    """How a run reaches a hub: through the network, or from the hub client's cache only (its local_files_only
    mode) and why. `qrun convert` and `qrun eval` both fetch through this, so both fail the same way offline."""

    source: str  # "modelscope" | "hf"
    offline_by: str | None  # "QRUN_OFFLINE=1", "HF_HUB_OFFLINE=1", "offline mode" (the caller's), or None
    unreachable: str | None  # unreachable_reason() of the hub's endpoints, or None

    @property
    def hub(self) -> str:
        return _HUB_NAMES[self.source]

    @property
    def local_only(self) -> bool:
        return self.offline_by is not None or self.unreachable is not None

    @property
    def other_source(self) -> str:
        return "--source hf" if self.source == "modelscope" else "--source modelscope"

    def not_cached(self, where: str, local_copy: str) -> DownloadError:
        """The one-line error of a cache-only run without a copy of `where` ("<repo> from <hub>"); `local_copy`
        says how to use files the user has, e.g. "convert a local copy with --from DIR". The hub library's own
        error says only that its offline mode found nothing (QRUN_DEBUG=1 shows it)."""
        if self.unreachable is not None:
            return DownloadError(
                f"could not download {where}: {self.hub} is unreachable ({self.unreachable}) "
                "and its cache has no complete copy",
                f"check the network (or its proxy), {local_copy}, or try {self.other_source}; "
                f"QRUN_OFFLINE=1 uses only the hubs' caches without trying the network",
            )
        undo = {"QRUN_OFFLINE=1": "unset QRUN_OFFLINE", "HF_HUB_OFFLINE=1": "unset HF_HUB_OFFLINE"}
        return DownloadError(
            f"could not download {where}: {self.offline_by} and the {self.hub} cache has no complete copy",
            f"{undo.get(self.offline_by or '', 'go online')} to download it, or {local_copy}",
        )


def hub_access(source: str, local_only: bool | None = None) -> HubAccess:
    """Whether to fetch from `source` online: not when `local_only` says so (None = QRUN_OFFLINE=1, or
    HF_HUB_OFFLINE=1 for "hf"), nor when no endpoint of the hub accepts a connection within PROBE_TIMEOUT_S."""
    offline_by = _offline_by(source) if local_only is None else ("offline mode" if local_only else None)
    unreachable = None if offline_by else unreachable_reason(hub_endpoints(source))
    return HubAccess(source=source, offline_by=offline_by, unreachable=unreachable)


def _offline_by(source: str) -> str | None:
    """Which setting makes this run offline: "QRUN_OFFLINE=1", "HF_HUB_OFFLINE=1" (Hugging Face only), or None."""
    if offline():
        return "QRUN_OFFLINE=1"
    if source == "hf":
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:  # huggingface_hub's own offline mode, as that library parsed it
            return "HF_HUB_OFFLINE=1"
    return None


def hub_endpoints(source: str) -> list[str]:
    """The URLs the hub's client talks to, as it chooses them (HF_ENDPOINT; MODELSCOPE_ENDPOINT, else modelscope.cn
    with modelscope.ai as its fallback: modelscope_hub/api.py resolve_endpoint_for_read)."""
    if source == "hf":
        from huggingface_hub import constants

        return [constants.ENDPOINT]
    configured = (os.environ.get("MODELSCOPE_ENDPOINT") or os.environ.get("MODELSCOPE_DOMAIN") or "").strip()
    if configured:
        return [configured if "://" in configured else f"https://{configured}"]
    return list(_MODELSCOPE_DEFAULT_ENDPOINTS)


def unreachable_reason(urls: list[str], timeout_s: float | None = None) -> str | None:
    """None when a TCP connection to any of `urls` (or to the proxy the environment sets for it) opens within
    timeout_s (default PROBE_TIMEOUT_S), else why not, e.g. "modelscope.cn:443: name resolution failed".

    The hub clients retry and wait far longer than a person at a prompt should (ModelScope: ~20 s of warnings);
    an unreachable host is told in about a second this way. Each attempt runs on its own daemon thread, so a
    resolver that hangs cannot hold the run past the deadline.
    """
    timeout_s = PROBE_TIMEOUT_S if timeout_s is None else timeout_s
    answers: queue.Queue[str | None] = queue.Queue()
    targets = [_connect_target(url) for url in urls]
    for host, port in targets:
        threading.Thread(target=_try_connect, args=(host, port, timeout_s, answers), daemon=True).start()
    deadline_s = time.monotonic() + timeout_s
    reasons: list[str] = []
    while len(reasons) < len(targets):
        try:
            reason = answers.get(timeout=max(deadline_s - time.monotonic(), 0.0))
        except queue.Empty:
            break
        if reason is None:
            return None
        reasons.append(reason)
    if len(reasons) < len(targets):
        reasons.append(f"no answer in {timeout_s:g} s")
    return "; ".join(reasons)


def _connect_target(url: str) -> tuple[str, int]:
    """(host, port) a client connects to for `url`: the proxy the environment names for it, else the URL's own."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (80 if parts.scheme == "http" else 443)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxied = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        return proxied.hostname or host, proxied.port or (443 if proxied.scheme == "https" else 80)
    return host, port


def _try_connect(host: str, port: int, timeout_s: float, answers: queue.Queue) -> None:
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except socket.gaierror:
        answers.put(f"{host}:{port}: name resolution failed")
    except TimeoutError:
        answers.put(f"{host}:{port}: no answer in {timeout_s:g} s")
    except OSError as err:
        answers.put(f"{host}:{port}: {os_reason(err).lower()}")
    else:
        answers.put(None)


def _cached_modelscope(repo_id: str, *, revision: str | None, patterns: list[str], cache_dir) -> Path | None:
    """ModelScope's cached snapshot when it is complete (its library, unlike Hugging Face's, has no fallback)."""
    try:
        folder = Path(
            _snapshot("modelscope", repo_id, revision=revision, patterns=patterns, cache_dir=cache_dir, local_only=True)
        )
    except Exception:
        return None
    if (folder / "config.json").is_file() and not missing_weight_files(folder):
        return folder
    return None
