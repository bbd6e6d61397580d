"""Which GGUF a command loads and with which settings, decided in one place: flag > QRUN_* env > profile > default.

ask, chat, bench and tune call resolve() and hand its LoadSettings to Engine.load, which applies it as it is; the
settings, with where each value came from, are what results and `--json` report. The tuning profile
(qrun.runner.profile) may choose load settings for the GGUF it measured. It never changes which GGUF is loaded
unless the user asks (`--quant auto`), and whenever it chooses something, stderr says so in one line.

The context is sized to the work: prompt + answer tokens, rounded up as llama.cpp allocates it (size_ctx), unless
--ctx says otherwise; a KV cache for 4,096 tokens is ~2 GB on a 7B model, most of it unused by a short question.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from qrun import registry, settings
from qrun.errors import NotConvertedError, QrunError, UsageError
from qrun.gguf_file import read_header
from qrun.runner import profile
from qrun.runner.engine import aligned_ctx, spec_for_header

Notice = Callable[[str], None]

AUTO_QUANT = "auto"  # --quant auto: the GGUF type `qrun tune` measured fastest for the workload, if any


def _quiet(_message: str) -> None:
    pass


def is_path(model_or_path) -> bool:
    text = str(model_or_path)
    return text.lower().endswith(".gguf") or os.sep in text or Path(text).is_file()


def gguf_for(model_or_path, *, quant: str | None = None, ggufs_dir=None) -> Path:
    """A model name/alias -> <ggufs>/<name>-<QUANT>.gguf; anything that looks like a path is used as it is.

    Raises:
        UnknownModelError: neither a path nor a known model name.
        NotConvertedError: a known model without a GGUF of that quant (names the `qrun convert` command to run).
    """
    if is_path(model_or_path):
        return Path(str(model_or_path)).expanduser()
    spec = registry.get(str(model_or_path))
    quant = settings.check_quant(quant or settings.DEFAULT_QUANT)
    folder = settings.gguf_dir(ggufs_dir)
    path = folder / f"{spec.name}-{quant}.gguf"
    if not path.is_file():
        command = f"qrun convert {spec.name}"
        if quant != settings.DEFAULT_QUANT:
            command += f" --quant {quant}"
        if ggufs_dir:
            command += f" --ggufs {folder}"
        raise NotConvertedError(f"{spec.name} is not converted to {quant} yet (no {path})", f"run `{command}`")
    return path


def check_threads(threads: int | None, *, flag: str = "--threads") -> int | None:
    """A --threads / --threads-batch value: None or 0 = not given (the default applies); the bound is
    settings.check_threads'."""
    if threads is None:
        return None
    return settings.check_threads(threads, flag=flag) or None


def check_ctx(ctx: int | None) -> None:
    if ctx is not None and ctx < 1:
        raise UsageError(f"--ctx must be at least 1 token, got {ctx}")


def check_kv_type(kv_type: str | None) -> str | None:
    if kv_type is None:
        return None
    name = kv_type.strip().lower()
    if name not in settings.KV_TYPES:
        raise UsageError(f"unknown --kv-type {kv_type!r}", f"use one of: {', '.join(settings.KV_TYPES)}")
    return name


def _model_of(gguf: Path, as_model: str | None) -> str | None:
    try:
        return spec_for_header(read_header(gguf), gguf, as_model=as_model).name
    except QrunError:  # not a GGUF qrun knows: Engine.load will say why; no profile applies to it
        return None


def resolve(
    model_or_path,
    *,
    quant: str | None = None,
    ggufs_dir=None,
    threads: int | None = None,
    threads_batch: int | None = None,
    repack: bool | None = None,
    use_mmap: bool | None = None,
    ctx: int | None = None,
    flash_attn: bool | None = None,
    kv_type: str | None = None,
    workload: str = "chat",
    use_profile: bool = True,
    as_model: str | None = None,
    notice: Notice = _quiet,
) -> tuple[Path, settings.LoadSettings]:
    """The GGUF to load and its LoadSettings (n_ctx None unless --ctx: size it with size_ctx once the work is known).

    Args:
        quant: a type of settings.QUANTS, or "auto" (the profile's fastest type for `workload`, else the default).
            Ignored for a .gguf path.
        threads / threads_batch: None or 0 = not given. --threads alone sets both, as before profiles existed.
        workload: the profile entry that applies, "chat" (short prompt, long answer) or "prompt".
        use_profile: False ignores the tuning profile (tune itself measures settings as given).
        as_model: which model a .gguf path not made by `qrun convert` holds (--as).
    Raises:
        UsageError / UnknownModelError / NotConvertedError: bad flags, unknown or unconverted model.
    """
    threads = check_threads(threads)
    threads_batch = check_threads(threads_batch, flag="--threads-batch")
    check_ctx(ctx)
    kv_type = check_kv_type(kv_type)
    path_given = is_path(model_or_path)
    asked = "" if path_given else (quant or "").strip()
    auto = asked.lower() == AUTO_QUANT
    doc = profile.read(notice=notice) if use_profile or auto else None

    def entry_for(model: str | None, gguf: Path | None) -> dict | None:
        if model is None or doc is None:
            return None
        return profile.entry_for(doc, model, workload=workload, gguf=gguf, ggufs_dir=ggufs_dir, notice=notice)

    sources: dict[str, str] = {}
    entry = None
    if path_given:
        gguf = Path(str(model_or_path)).expanduser()
        chosen_quant = None
        sources["quant"] = "flag"  # the file named is the one loaded
        if use_profile:
            entry = entry_for(_model_of(gguf, as_model), gguf)
    else:
        model = registry.get(str(model_or_path)).name
        if auto:
            entry = entry_for(model, None)
            if entry is not None:
                chosen_quant, sources["quant"] = entry["settings"]["quant"], "profile"
                notice(
                    f"note: --quant auto: {model}-{chosen_quant}.gguf, the type `qrun tune` measured fastest "
                    f"for {workload} on this machine"
                )
            else:
                chosen_quant, sources["quant"] = settings.DEFAULT_QUANT, "default"
                notice(f"note: --quant auto: no usable tuning profile for {model}; using {chosen_quant}")
        else:
            chosen_quant = settings.check_quant(asked or settings.DEFAULT_QUANT)
            sources["quant"] = "flag" if asked else "default"
        gguf = gguf_for(model, quant=chosen_quant, ggufs_dir=ggufs_dir)
        if use_profile and entry is None:
            entry = entry_for(model, gguf)
    tuned = dict(entry["settings"]) if entry else {}
    tuned.pop("quant", None)  # the profile never picks the file (handled above, only for --quant auto)
    flags = {
        "n_threads": threads,
        "n_threads_batch": threads_batch,
        "repack": repack,
        "use_mmap": use_mmap,
        "flash_attn": flash_attn,
        "kv_type": kv_type,
    }
    values, picked = _pick(flags, tuned)
    sources.update(picked)
    values["n_ctx"], sources["n_ctx"] = (ctx, "flag") if ctx is not None else (None, "default")
    load = settings.LoadSettings(quant=chosen_quant, sources=sources, **values)
    from_profile = [k for k, v in sources.items() if v == "profile" and k != "quant"]
    if from_profile:
        shown = ", ".join(f"{k}={_show(values[k])}" for k in from_profile)
        notice(f"note: {gguf.name}: {shown} from the tuning profile ({workload}; flags override it)")
    return gguf, load


def _pick(flags: dict, tuned: dict) -> tuple[dict, dict]:
    """Each load setting but quant and n_ctx from flag > QRUN_* env > profile (`tuned`) > default, and its source."""
    values: dict = {}
    sources: dict[str, str] = {}

    def pick(key, env_value, default):
        for value, source in ((flags.get(key), "flag"), (env_value, "env"), (tuned.get(key), "profile")):
            if value is not None:
                values[key], sources[key] = value, source
                return
        values[key], sources[key] = default, "default"

    env_value = os.environ.get("QRUN_THREADS", "").strip()
    env_threads = (settings.check_threads(env_value, flag="QRUN_THREADS") or None) if env_value else None
    env_repack = settings.env_bool("QRUN_REPACK") if os.environ.get("QRUN_REPACK", "").strip() else None
    pick("n_threads", env_threads, settings.physical_cores())
    if sources["n_threads"] in ("flag", "env") and flags.get("n_threads_batch") is None:
        # --threads 1 alone means "use 1 thread": prompt processing follows it
        values["n_threads_batch"], sources["n_threads_batch"] = values["n_threads"], sources["n_threads"]
    else:
        pick(
            "n_threads_batch",
            None,
            values["n_threads"] if sources["n_threads"] == "default" else settings.physical_cores(),
        )
    pick("repack", env_repack, False)
    pick("use_mmap", None, True)
    pick("flash_attn", None, False)
    pick("kv_type", None, "f16")
    return values, sources


def defaults() -> settings.LoadSettings:
    """What a model is loaded with when no flag or profile says otherwise (QRUN_* still apply): `qrun tune`
    measures it as qrun's default point."""
    values, sources = _pick({}, {})
    return settings.LoadSettings(sources=sources, **values)


def _show(value) -> str:
    return ("on" if value else "off") if isinstance(value, bool) else str(value)


def size_ctx(load: settings.LoadSettings, *, work_tokens: int, n_ctx_train: int | None) -> settings.LoadSettings:
    """The context sized to the work: work_tokens (prompt + answer) rounded up as llama.cpp allocates, at most the
    training context. A --ctx given as a flag is kept as it is."""
    if load.sources.get("n_ctx") == "flag" and load.n_ctx is not None:
        return load
    n_ctx = aligned_ctx(max(1, work_tokens))
    if n_ctx_train:
        n_ctx = min(n_ctx, n_ctx_train)
    return load.with_value("n_ctx", n_ctx, "work")
