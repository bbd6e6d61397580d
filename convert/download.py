"""Fetch the files conversion needs from ModelScope (default) or Hugging Face, and nothing else.

Both hub libraries keep their own cache (ModelScope: MODELSCOPE_CACHE or ~/.cache/modelscope; Hugging Face:
HF_HUB_CACHE or ~/.cache/huggingface/hub), resume interrupted files, and show tqdm progress on stderr; qrun uses
them as they are, so a checkpoint already fetched by other tools is reused. QRUN_OFFLINE=1 (or HF_HUB_OFFLINE=1 for
Hugging Face) resolves from those caches without touching the network.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from qrun import settings
from qrun.errors import DiskSpaceError, DownloadError, UsageError
from qrun.registry import ModelSpec

SOURCES = ("modelscope", "hf")


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


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 240 else text[:237] + "..."


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

    Args:
        spec: the model.
        source: "modelscope" or "hf".
        revision: branch, tag or commit to pin; None = the hub's default branch.
        cache_dir: override the hub library's cache folder.
        local_only: resolve from the local cache only; None = QRUN_OFFLINE.

    Returns:
        DownloadResult with the snapshot folder and the revision used.

    Raises:
        UsageError: unknown source.
        DownloadError: the hub could not be reached, the repo or revision does not exist, or files are missing.
    """
    if source not in SOURCES:
        raise UsageError(f"unknown source {source!r}", f"use one of: {', '.join(SOURCES)}")
    local_only = offline() if local_only is None else local_only
    repo_id = _repo_id(spec, source)
    hub = _HUB_NAMES[source]
    where = f"{repo_id} from {hub}" + (f" at revision {revision}" if revision else "")
    print(f"[download] {where} (only config, tokenizer and weight files)", file=sys.stderr, flush=True)

    def fetch(patterns: list[str]) -> Path:
        try:
            return Path(
                _snapshot(
                    source, repo_id, revision=revision, patterns=patterns, cache_dir=cache_dir, local_only=local_only
                )
            )
        except Exception as exc:  # any failure of the hub library: network, auth, missing repo/revision, disk
            if _disk_full(exc):
                raise DiskSpaceError(
                    f"the disk filled up while downloading {where}: {_short(exc)}",
                    "free space (a 7B checkpoint is 12-15 GB) or point HF_HOME / MODELSCOPE_CACHE "
                    "at a bigger disk, then rerun: the download resumes",
                ) from exc
            if source == "modelscope" and not local_only:
                cached = _cached_modelscope(repo_id, revision=revision, patterns=patterns, cache_dir=cache_dir)
                if cached is not None:
                    print(
                        f"[download] {hub} unreachable ({_short(exc)}); using the complete cached copy {cached}",
                        file=sys.stderr,
                        flush=True,
                    )
                    return cached
            other = "--source hf" if source == "modelscope" else "--source modelscope"
            raise DownloadError(
                f"could not download {where}: {_short(exc)}",
                f"check the network and the model id/revision, or convert a local copy with --from DIR, or try {other}",
            ) from exc

    folder = fetch([*base_patterns(spec), *SAFETENSORS_PATTERNS])
    if not any(folder.glob("*.safetensors")):
        folder = fetch([*base_patterns(spec), *PICKLE_PATTERNS])
    missing = [name for name in ("config.json",) if not (folder / name).is_file()] + missing_weight_files(folder)
    if missing:
        raise DownloadError(
            f"the {hub} snapshot of {repo_id} in {folder} lacks {', '.join(missing)}",
            "rerun to resume the download, or check that the repo id and revision are right",
        )
    used = folder.name if folder.parent.name == "snapshots" else revision
    return DownloadResult(path=folder, hub=source, repo_id=repo_id, requested_revision=revision, revision=used)


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
