"""One model from checkpoint to verified GGUF: download -> unquantized GGUF -> quantize -> hash -> manifest.

The unquantized GGUF is qrun's own conversion: BF16 when the checkpoint is bf16 (its bits copied), else F16, or
whichever --quant F16/BF16 asks for. Everything else is llama.cpp's quantizer run on it.

Steps are resumable: a finished output that matches its manifest is skipped, a complete intermediate from the
same checkpoint files is reused after an interruption, and nothing half-written ever carries a final name (writers
use a `<name>.<pid>-<random>.partial` of their own and rename; leftovers of dead runs are deleted on the next run).
A run holds its model's output lock in the folder (workspace.output_lock) from start to end; an earlier output and
its manifest stay a valid pair until a complete, hashed new file replaces them (manifest.install_gguf).
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from pathlib import Path
from typing import Callable

from qrun import registry, settings
from qrun.convert import manifest as mf
from qrun.convert import workspace as ws
from qrun.errors import CheckpointError, ConversionError, DiskSpaceError, QrunError, UsageError
from qrun.fsutil import os_reason, sha256_file
from qrun.measure import MemoryWatch
from qrun.registry import ModelSpec

# progress(step, **info): "convert" reports done_bytes/total_bytes/tensor, "quantize" done/total/tensor (tensors).
Progress = Callable[..., None]


def gguf_path_for(model: str, quant: str, out_dir: str | os.PathLike | None = None) -> Path:
    """`<out>/<canonical-name>-<QUANT>.gguf`; out_dir None = settings.gguf_dir() (QRUN_GGUF_DIR, then ./ggufs)."""
    return settings.gguf_dir(out_dir) / f"{registry.get(model).name}-{settings.check_quant(quant)}.gguf"


def find_converted(out_dir: str | os.PathLike | None = None) -> list[tuple[ModelSpec, str, Path, dict | None]]:
    """GGUFs under their final names in `out_dir`, in registry and QUANTS order.

    Returns:
        (spec, quant, path, manifest) per file; manifest is None when it is missing or stale (use
        qrun.convert.manifest.check_manifest(path) for the reason).
    """
    folder = settings.gguf_dir(out_dir)
    found = []
    for spec in registry.MODELS:
        for quant in settings.QUANTS:
            path = folder / f"{spec.name}-{quant}.gguf"
            if path.is_file():
                check = mf.check_manifest(path)
                found.append((spec, quant, path, check.manifest if check.ok else None))
    return found


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _measured(steps: dict, name: str):
    """Context manager recording a step's wall time and peak memory into steps[name]."""

    class _Step(MemoryWatch):
        def __exit__(self, *exc):
            super().__exit__(*exc)
            steps[name] = self.stats().to_dict()

    return _Step()


def _up_to_date(path: Path, *, checkpoint_fingerprint: str | None, revision: str | None, source: str) -> dict | None:
    """The manifest of `path` when the file matches it and it came from what was asked for, else None.

    With --from, the same checkpoint files (fingerprint); with --revision, that hub revision; otherwise any
    complete output counts ("make sure I have it"), so a rerun needs no network.
    """
    check = mf.check_manifest(path, verify_sha256=True)
    if not check.ok:
        return None
    src = check.manifest.get("source") or {}
    if checkpoint_fingerprint is not None:
        wanted = src.get("fingerprint") == checkpoint_fingerprint
    elif revision is not None:
        wanted = src.get("hub") == source and revision in (src.get("requested_revision"), src.get("revision"))
    else:
        wanted = True
    if not wanted:
        return None
    if check.hashed:  # a copy (or a touched file) that matches and is kept: no need to hash it again next time
        mf.remember_verified(path, check.manifest)
    return check.manifest


def convert_model(
    model: str,
    *,
    from_dir: str | os.PathLike | None = None,
    source: str = "modelscope",
    revision: str | None = None,
    quant: str = settings.DEFAULT_QUANT,
    out_dir: str | os.PathLike | None = None,
    keep_f16: bool = False,
    threads: int | None = None,
    progress: Progress | None = None,
) -> dict:
    """Convert one model to `<out>/<name>-<QUANT>.gguf` with a manifest next to it.

    Args:
        model: canonical name or alias.
        from_dir: local checkpoint folder; None = download from `source`.
        source: "modelscope" or "hf" (ignored with from_dir).
        revision: hub branch/tag/commit to pin (ignored with from_dir).
        quant: one of settings.QUANTS.
        out_dir: output folder; None = settings.gguf_dir().
        keep_f16: also keep `<name>-F16.gguf` (with its manifest); the quantized file is then made from it.
        threads: quantizer threads; None or 0 = all physical cores.
        progress: optional callback progress(step, **info) for per-tensor progress.

    Returns:
        The manifest of the output, plus "status" ("converted" or "up_to_date") and "path".

    Raises:
        UnknownModelError, UsageError, CheckpointError, DownloadError, DiskSpaceError, ConversionError.
    """
    spec = registry.get(model)
    quant = settings.check_quant(quant)
    if threads is not None and threads < 0:
        raise UsageError(f"threads must be >= 0, got {threads}", "0 means all physical cores")
    threads = threads or settings.default_threads()
    if keep_f16 and quant == "BF16":
        raise UsageError("--keep-f16 keeps an F16 copy of a quantized model; BF16 is not quantized",
                         "drop --keep-f16, or run `qrun convert --quant F16` as well")
    out = _output_dir(out_dir)
    with ws.output_lock(spec, out, say=_say):
        try:
            return _convert_locked(spec, out, from_dir=from_dir, source=source, revision=revision, quant=quant,
                                   keep_f16=keep_f16, threads=threads, progress=progress)
        except QrunError:
            raise
        except OSError as err:  # the disk filled up, the folder turned read-only, a file vanished under us
            raise _file_system_error(err, out) from None


def _output_dir(out_dir: str | os.PathLike | None) -> Path:
    """The output folder, created; one-line errors for a path that cannot be a folder."""
    out = settings.gguf_dir(out_dir)
    named = "--out" if out_dir else ("QRUN_GGUF_DIR" if os.environ.get("QRUN_GGUF_DIR") else "the output folder")
    hint = "choose a writable folder with --out DIR (or QRUN_GGUF_DIR)"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UsageError(f"{named} {out} is a file, not a folder", hint) from None
    except NotADirectoryError:
        raise UsageError(f"{named} {out} is inside a file, not a folder", hint) from None
    except OSError as err:
        raise UsageError(f"cannot create {named} {out}: {os_reason(err)}", hint) from None
    if not out.is_dir():
        raise UsageError(f"{named} {out} is not a folder", hint)
    return out


def _file_system_error(err: OSError, out: Path) -> QrunError:
    where = err.filename or out
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskSpaceError(f"the disk filled up while writing {where}",
                              "free some space or pass --out DIR on a disk with more room, then rerun "
                              "(a complete intermediate is reused)")
    return ConversionError(f"cannot write {where}: {os_reason(err)}",
                           "check the folder's permissions and free space, or pass --out DIR")


def _convert_locked(spec: ModelSpec, out: Path, *, from_dir, source, revision, quant, keep_f16, threads,
                    progress) -> dict:
    """convert_model() once its output lock is held."""
    final = out / f"{spec.name}-{quant}.gguf"
    unquantized_final = {t: out / f"{spec.name}-{t}.gguf" for t in settings.UNQUANTIZED}

    for leftover in ws.clean_stale_partials(spec, out):
        _say(f"[convert] removed leftover of an interrupted run: {leftover.name}")

    local_dir = None
    local_fingerprint = None
    if from_dir is not None:
        local_dir = Path(from_dir).expanduser().resolve()
        if not local_dir.is_dir():
            raise CheckpointError(f"checkpoint folder {local_dir} does not exist",
                                  "pass the folder that holds config.json and the weights")
        local_fingerprint = ws.fingerprint(local_dir, spec)

    def wanted_up_to_date() -> dict | None:
        done = _up_to_date(final, checkpoint_fingerprint=local_fingerprint, revision=revision, source=source)
        if done and keep_f16 and quant != "F16":
            if not _up_to_date(unquantized_final["F16"], checkpoint_fingerprint=local_fingerprint, revision=revision, source=source):
                return None
        return done

    done = wanted_up_to_date()
    if done is not None:
        _say(f"[convert] {final.name} is up to date (matches its manifest)")
        return {**done, "status": "up_to_date", "path": str(final)}

    steps: dict = {}
    if local_dir is not None:
        ckpt_dir = local_dir
        source_info = {"kind": "local", "path": str(local_dir)}
    else:
        from qrun.convert.download import download_checkpoint

        with _measured(steps, "download"):
            result = download_checkpoint(spec, source=source, revision=revision)
        ckpt_dir = result.path
        source_info = result.to_source()
    source_info["fingerprint"] = ws.fingerprint(ckpt_dir, spec)

    # The unquantized type this run writes: what --quant asks for, F16 when it must be kept, else the checkpoint's own.
    if quant in settings.UNQUANTIZED:
        base_type = quant
    else:
        base_type = "F16" if keep_f16 else ws.natural_weight_type(ckpt_dir)
    intermediate = ws.intermediate_path(spec, out, base_type)
    for stale in ws.intermediate_paths(spec, out):
        if stale != intermediate:
            ws.remove_intermediate(stale)

    # What to quantize from: a kept F16/BF16 output or a complete intermediate of the same checkpoint files.
    base_path, base_marker = None, None
    reusable = [base_type] if quant in settings.UNQUANTIZED or keep_f16 else [base_type, *settings.UNQUANTIZED]
    for kept_type in dict.fromkeys(reusable):
        kept = _up_to_date(unquantized_final[kept_type], checkpoint_fingerprint=source_info["fingerprint"],
                           revision=None, source=source)
        if kept is not None:
            base_type, base_path = kept_type, unquantized_final[kept_type]
            base_marker = {"convert_step": kept.get("steps", {}).get("convert")}
            _say(f"[convert] reusing {base_path.name}")
            break
    if base_path is None:
        base_marker = ws.reusable_marker(intermediate, source_info["fingerprint"])
        if base_marker is not None:
            base_path = intermediate
            _say(f"[convert] reusing the complete {base_type} intermediate {intermediate.name} of an interrupted run")
        else:
            ws.remove_intermediate(intermediate)

    quantize_needed = quant not in settings.UNQUANTIZED and _up_to_date(
        final, checkpoint_fingerprint=source_info["fingerprint"], revision=None, source=source) is None
    n_params = ws.estimate_params(ckpt_dir)
    ws.check_free_disk(
        out,
        unquantized_bytes=0 if base_path else ws.estimate_gguf_bytes(n_params, base_type),
        unquantized_type=base_type,
        output_bytes=ws.estimate_gguf_bytes(n_params, quant) if quantize_needed else 0,
        quant=quant,
    )

    if base_path is None:
        from qrun.convert.archs import converter_for
        from qrun.convert.gguf_writer import write_gguf

        _say(f"[convert] {spec.name}: {ckpt_dir} -> {base_type} GGUF")
        with _measured(steps, "convert"):
            converter = converter_for(spec, ckpt_dir, weight_type=base_type)
            writer_info = write_gguf(converter, intermediate, progress=_step_progress(progress, "convert"))
        ws.write_marker(intermediate, checkpoint_fingerprint=source_info["fingerprint"], source=source_info,
                        convert_step=steps["convert"], writer_info=writer_info)
        base_path = intermediate
    else:
        steps["convert"] = {**(base_marker.get("convert_step") or {}), "reused": True}
    base_size_bytes = base_path.stat().st_size

    def install(staged: Path, path: Path, file_quant: str, file_steps: dict) -> dict:
        """Hash the finished `staged` file, then put it and its manifest in place of `path` and its manifest."""
        with _measured(file_steps, "hash"):
            digest = sha256_file(staged)
        manifest = mf.build_manifest(model=spec.name, quant=file_quant, gguf_path=staged, sha256=digest,
                                     source=source_info, unquantized_type=base_type,
                                     unquantized_size_bytes=base_size_bytes, steps=file_steps, threads=threads,
                                     gguf_name=path.name)
        return mf.install_gguf(staged, path, manifest)

    result_manifest = None
    if quantize_needed:
        from qrun.convert.quantize import quantize_gguf

        _say(f"[quantize] {base_path.name} -> {final.name} ({threads} threads)")
        staged = None
        try:
            with _measured(steps, "quantize"):
                staged = quantize_gguf(base_path, final, quant, threads=threads, progress=progress, commit=False)
            result_manifest = install(staged, final, quant, steps)
        finally:
            if staged is not None:
                with contextlib.suppress(FileNotFoundError):
                    staged.unlink()  # still there only when hashing or installing it failed
    elif quant not in settings.UNQUANTIZED:
        result_manifest = mf.read_manifest(final)
    kept_final = unquantized_final[base_type] if (keep_f16 or quant in settings.UNQUANTIZED) else None
    if kept_final is not None:
        if base_path != kept_final:
            kept_manifest = install(base_path, kept_final, base_type,
                                    {k: v for k, v in steps.items() if k != "quantize"})
            ws.remove_intermediate(base_path)
        else:
            kept_manifest = mf.read_manifest(kept_final)
        if quant in settings.UNQUANTIZED:
            result_manifest = kept_manifest
    elif base_path == intermediate:
        ws.remove_intermediate(intermediate)
    _say(f"[convert] wrote {final}")
    return {**result_manifest, "status": "converted", "path": str(final)}


def _step_progress(progress: Progress | None, step: str):
    """Adapt gguf_writer's progress(done_bytes, total_bytes, tensor) to progress(step, **info)."""
    if progress is None:
        return None

    def forward(done_bytes, total_bytes, tensor=""):
        progress(step, done_bytes=done_bytes, total_bytes=total_bytes, tensor=tensor)

    return forward
