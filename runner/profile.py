"""The per-machine tuning profile: what `qrun tune` (qrun.bench.tune) chose, read back by qrun.runner.resolve.

<qrun_home>/tune-profile.json (written atomically)::

    {"schema": 1, "created_utc": "...", "command": "qrun tune ...",
     "machine": {the fingerprint fields of qrun.runner.machine that decide speed},
     "models": {"qwen-7b-chat": {
         "chat":   {"settings": {"quant", "repack", "use_mmap", "n_threads", "n_threads_batch"},
                    "gguf": {"name": "qwen-7b-chat-Q4_K_M.gguf", "size_bytes": ...}, "evidence": {...}},
         "prompt": {...}}}}

Precedence where a model is loaded: command-line flag, then QRUN_* environment variable, then the profile, then
qrun's default (qrun.runner.resolve) — and every loader reports which of those each setting came from. The profile
chooses load settings only: which GGUF is loaded changes only with `--quant auto`. A profile that cannot be trusted
(corrupt, unknown schema, measured on another machine, or for a GGUF that is gone or was replaced) is ignored with
one line on stderr: running with defaults is always safe, running with another machine's choices is not.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from qrun import settings
from qrun.fsutil import write_json_atomic
from qrun.runner import machine

SCHEMA = 1
FILE_NAME = "tune-profile.json"
WORKLOADS = ("chat", "prompt")
# Fingerprint fields that decide which settings are fastest; hostname and load average are left out on purpose
# (containers get a new hostname per start; the load average is per measurement, in the evidence).
MATCH_FIELDS = (
    "cpu_model",
    "physical_cores",
    "logical_cores",
    "cpu_flags",
    "ram_bytes",
    "llama_cpp_python",
    "llama_cpp_system_info",
)
SETTING_KEYS = ("quant", "repack", "use_mmap", "n_threads", "n_threads_batch")
# Measured by newer `qrun tune` runs only: used when present, absent in older profiles.
OPTIONAL_SETTING_KEYS = ("flash_attn", "kv_type")

Notice = Callable[[str], None]


def profile_path() -> Path:
    return settings.qrun_home() / FILE_NAME


def machine_key() -> dict:
    full = machine.fingerprint()
    return {k: full.get(k) for k in MATCH_FIELDS}


def write(doc: dict, path: Path | None = None) -> Path:
    path = path or profile_path()
    write_json_atomic(path, doc)
    return path


def new_document(*, command: str) -> dict:
    import time

    return {
        "schema": SCHEMA,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": command,
        "machine": machine_key(),
        "models": {},
    }


def _check(doc, machine: dict) -> str | None:
    """Why a whole profile document is unusable, or None."""
    if not isinstance(doc, dict):
        return "it is not a JSON object"
    if doc.get("schema") != SCHEMA:
        return f"unknown schema {doc.get('schema')!r} (this qrun reads schema {SCHEMA})"
    if not isinstance(doc.get("models"), dict) or not isinstance(doc.get("machine"), dict):
        return "it has no machine or models"
    changed = [k for k in MATCH_FIELDS if doc["machine"].get(k) != machine.get(k)]
    if changed:
        return f"it was measured on another machine ({', '.join(changed)} differ)"
    return None


def read(*, path: Path | None = None, notice: Notice, machine: dict | None = None) -> dict | None:
    """The profile document if present and usable; None (with one notice line) otherwise; None silently if absent."""
    path = path or profile_path()
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        notice(f"note: ignoring the tuning profile {path}: unreadable ({type(err).__name__}); rerun `qrun tune`")
        return None
    why = _check(doc, machine if machine is not None else machine_key())
    if why:
        notice(f"note: ignoring the tuning profile {path}: {why}; rerun `qrun tune`")
        return None
    return doc


def _malformed(entry) -> str | None:
    """Why a profile entry cannot be used as load settings (a hand edit, another tool's file), or None."""
    if (
        not isinstance(entry, dict)
        or not isinstance(entry.get("settings"), dict)
        or not isinstance(entry.get("gguf"), dict)
    ):
        return "malformed (no settings or gguf object)"
    st, gguf = entry["settings"], entry["gguf"]
    missing = [k for k in SETTING_KEYS if k not in st]
    if missing:
        return f"malformed (settings lack {', '.join(missing)})"
    if st["quant"] not in settings.QUANTS:
        return f"malformed (quant {st['quant']!r} is not one of {', '.join(settings.QUANTS)})"
    for key in ("repack", "use_mmap"):
        if not isinstance(st[key], bool):
            return f"malformed ({key} {st[key]!r} is not true or false)"
    for key in ("n_threads", "n_threads_batch"):
        value = st[key]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= settings.max_threads():
            return f"malformed ({key} {value!r} is not a thread count from 1 to {settings.max_threads()})"
    size = gguf.get("size_bytes")
    if not isinstance(gguf.get("name"), str) or isinstance(size, bool) or not isinstance(size, int):
        return "malformed (gguf needs a name and a size_bytes number)"
    if st.get("flash_attn") is not None and not isinstance(st["flash_attn"], bool):
        return f"malformed (flash_attn {st['flash_attn']!r} is not true or false)"
    if st.get("kv_type") is not None and st["kv_type"] not in settings.KV_TYPES:
        return f"malformed (kv_type {st['kv_type']!r} is not one of {', '.join(settings.KV_TYPES)})"
    return None


def entry_for(
    doc: dict | None, model: str, *, workload: str, gguf: Path | None, ggufs_dir=None, notice: Notice
) -> dict | None:
    """The profile's {"settings", ...} for a model and workload, if its measured GGUF is still the one in use.

    gguf: the file about to be loaded (None: the caller has not chosen a quant, so the profile's quant is used
    and its file must exist in the GGUF folder).
    """
    if doc is None:
        return None
    model_entry = doc["models"].get(model)
    entry = model_entry.get(workload) if isinstance(model_entry, dict) else model_entry
    if not entry:
        return None
    decision = (entry.get("evidence") or {}).get("decision") if isinstance(entry, dict) else None
    if isinstance(decision, dict) and decision.get("keep_default") is True:
        return None  # `qrun tune` showed nothing better than qrun's defaults: they apply, as defaults
    why = _malformed(entry)
    if why:
        notice(f"note: ignoring the tuning profile's {model} entry: {why}; rerun `qrun tune`")
        return None
    chosen = {k: entry["settings"][k] for k in SETTING_KEYS}
    chosen.update({k: entry["settings"][k] for k in OPTIONAL_SETTING_KEYS if k in entry["settings"]})
    name, size = entry["gguf"]["name"], entry["gguf"]["size_bytes"]
    if gguf is not None and Path(gguf).name != name:
        return None  # another quant (or file) than the one measured: nothing measured applies to it
    path = Path(gguf) if gguf is not None else settings.gguf_dir(ggufs_dir) / name
    if not path.is_file() or path.stat().st_size != size:
        why = "is no longer converted" if not path.is_file() else "was replaced since it was tuned"
        notice(f"note: ignoring the tuning profile's {model} entry: {path} {why}; rerun `qrun tune`")
        return None
    return dict(entry, settings=chosen)
