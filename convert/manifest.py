"""The JSON manifest written next to each GGUF qrun produces: `<name>-<QUANT>.json` beside `<name>-<QUANT>.gguf`.

It says where the weights came from, what the file is (sha256, size, ggml types actually used, real bits per
weight), which versions made it, and what each step cost. Readers (convert's skip check, `qrun models`, bench)
tolerate a missing or stale manifest: check_manifest() says which, it never raises for a bad manifest.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from qrun.fsutil import commit_file, file_identity, sha256_file, write_json_atomic
from qrun.gguf_file import read_tensor_infos

SCHEMA_VERSION = 1


def manifest_path_for(gguf_path: str | os.PathLike) -> Path:
    return Path(gguf_path).with_suffix(".json")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict:
    """Versions of the software that wrote a GGUF (llama-cpp-python pins the llama.cpp it vendors)."""
    from qrun import __version__

    return {"qrun": __version__, "llama_cpp_python": _version("llama-cpp-python"), "gguf": _version("gguf")}


def tensor_summary(gguf_path: str | os.PathLike) -> dict:
    """Tensor count, parameter count and ggml types of a GGUF.

    `bits_per_weight` is tensor data bits over parameters: it shows what a QUANT really costs. ChatGLM3's FFN width
    13696 is not a multiple of 256, so in Q4_K_M its ffn_down tensors fall back to other types (Q5_0/Q8_0): the
    per-type counts make that visible.
    """
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    infos = read_tensor_infos(gguf_path)
    types: dict[str, dict] = {}
    n_params = n_data_bytes = 0
    for _name, ggml_type, n_elements in infos:
        qtype = GGMLQuantizationType(ggml_type)
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        n_bytes = n_elements // block_size * type_size
        entry = types.setdefault(qtype.name, {"tensors": 0, "params": 0, "bytes": 0})
        entry["tensors"] += 1
        entry["params"] += n_elements
        entry["bytes"] += n_bytes
        n_params += n_elements
        n_data_bytes += n_bytes
    for entry in types.values():
        entry["bits_per_weight"] = round(entry["bytes"] * 8 / entry["params"], 4) if entry["params"] else 0.0
    return {
        "tensor_count": len(infos),
        "params": n_params,
        "tensor_data_bytes": n_data_bytes,
        "bits_per_weight": round(n_data_bytes * 8 / n_params, 4) if n_params else 0.0,
        "tensor_types": dict(sorted(types.items(), key=lambda kv: -kv[1]["params"])),
    }


def build_manifest(
    *,
    model: str,
    quant: str,
    gguf_path: str | os.PathLike,
    sha256: str,
    source: dict,
    unquantized_type: str,
    unquantized_size_bytes: int | None,
    steps: dict,
    threads: int | None,
    gguf_name: str | None = None,
) -> dict:
    """The manifest dict for a finished GGUF (see module docstring; field names carry their units).

    gguf_name: the file's final name when `gguf_path` is still its partial (install_gguf() renames it and records
    the identity of the file under its final name).
    """
    path = Path(gguf_path)
    return {
        "schema_version": SCHEMA_VERSION,
        "model": model,
        "quant": quant,
        "gguf": gguf_name or path.name,
        "sha256": sha256,
        **file_identity(path),
        "unquantized_type": unquantized_type,  # the F16/BF16 GGUF qrun wrote and llama.cpp quantized
        "unquantized_size_bytes": unquantized_size_bytes,
        **tensor_summary(path),
        "source": source,
        "versions": versions(),
        "threads": threads,
        "steps": steps,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_manifest(gguf_path: str | os.PathLike, manifest: dict) -> Path:
    path = manifest_path_for(gguf_path)
    write_json_atomic(path, manifest)
    return path


def install_gguf(staged: str | os.PathLike, final: str | os.PathLike, manifest: dict) -> dict:
    """Rename a finished, hashed GGUF over `final`, then write its manifest; returns the manifest written.

    An earlier `final` and its manifest stay a valid pair until this runs: the new file is complete (and hashed)
    before it replaces the old one, and the new manifest follows at once. A kill between the two renames leaves the
    new file with the old manifest, which does not match it (other inode and ctime), so nothing vouches for it.
    """
    commit_file(staged, final)
    manifest = {**manifest, **file_identity(final)}
    write_manifest(final, manifest)
    return manifest


def remember_verified(gguf_path: str | os.PathLike, manifest: dict) -> bool:
    """Record in the manifest that the file now there was hashed and matches, so later checks say "ok" without
    hashing again. False when the manifest cannot be rewritten (a read-only folder): the check just repeats."""
    gguf_path = Path(gguf_path)
    updated = {**manifest, **file_identity(gguf_path), "verified": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        write_manifest(gguf_path, updated)
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class ManifestCheck:
    """How a GGUF relates to its manifest. status: "ok", "missing", "stale", "unreadable" or "unverified" (same
    size, other identity — a copy, most likely — and not hashed)."""

    status: str
    manifest: dict | None
    reason: str = ""
    hashed: bool = False  # the sha256 was computed for this check (remember_verified() saves an "ok" one)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def read_manifest(gguf_path: str | os.PathLike) -> dict | None:
    """The manifest next to a GGUF as written, or None if there is none or it is not valid JSON."""
    try:
        data = json.loads(manifest_path_for(gguf_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def check_manifest(
    gguf_path: str | os.PathLike, *, verify_sha256: bool = False, hash_always: bool = False
) -> ManifestCheck:
    """Does the manifest next to `gguf_path` describe the file that is there?

    Cheap first: the size, modified time, inode and ctime recorded when the file was written (fsutil.file_identity;
    a file edited in place and given back its mtime still has another ctime). A file that differs only in those —
    a copy, a restored backup, a touched or edited file — is "unverified"; with `verify_sha256` it is hashed and
    "ok" when the sha256 matches (remember_verified() then saves the new identity), else "stale".
    `hash_always` hashes the file even when its identity matches (`qrun models --verify`: a disk can rot).
    """
    gguf_path = Path(gguf_path)
    mpath = manifest_path_for(gguf_path)
    if not mpath.exists():
        return ManifestCheck("missing", None, f"no manifest {mpath.name}")
    manifest = read_manifest(gguf_path)
    if manifest is None or manifest.get("schema_version") != SCHEMA_VERSION:
        return ManifestCheck("unreadable", manifest, f"{mpath.name} is not a qrun manifest of schema {SCHEMA_VERSION}")
    try:
        identity = file_identity(gguf_path)
    except OSError:
        return ManifestCheck("stale", manifest, f"{gguf_path.name} does not exist")
    if manifest.get("gguf") != gguf_path.name:
        return ManifestCheck("stale", manifest, f"manifest describes {manifest.get('gguf')!r}, not {gguf_path.name}")
    if manifest.get("size_bytes") != identity["size_bytes"]:
        return ManifestCheck(
            "stale",
            manifest,
            f"size {identity['size_bytes']} bytes differs from the manifest's {manifest.get('size_bytes')}",
        )
    if not hash_always and all(manifest.get(key) == value for key, value in identity.items()):
        return ManifestCheck("ok", manifest)
    if verify_sha256 or hash_always:
        if sha256_file(gguf_path) == manifest.get("sha256"):
            return ManifestCheck("ok", manifest, "sha256 matches", hashed=True)
        return ManifestCheck(
            "stale", manifest, "file changed after its manifest was written (sha256 differs)", hashed=True
        )
    if manifest.get("mtime_ns") != identity["mtime_ns"]:
        why = "modified time differs from the manifest's (a copy?)"
    else:
        why = "the file was replaced, copied or changed since its manifest was written"
    return ManifestCheck("unverified", manifest, f"{why}; `qrun models --verify` compares its sha256")
