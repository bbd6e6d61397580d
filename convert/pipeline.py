"""One model from checkpoint to verified GGUF: download -> unquantized GGUF -> quantize -> hash -> manifest.

The unquantized GGUF is qrun's own conversion: BF16 when the checkpoint is bf16 (its bits copied), else F16, or
whichever --quant F16/BF16 asks for. Everything else is llama.cpp's quantizer run on it.

Steps are resumable: a finished output that matches its manifest is skipped, a complete intermediate from the
same checkpoint files is reused after an interruption, and nothing half-written ever carries a final name (writers
use a `<name>.<pid>-<random>.partial` of their own and rename; leftovers of dead runs are deleted on the next run).
A run holds its model's output lock in the folder (workspace.output_lock) from start to end; an earlier output and
its manifest stay a valid pair until a complete, hashed new file replaces them (manifest.install_gguf).

Which steps a run takes is decided by convert/plan.py from what this module observes in the folder under the lock;
_Execution runs them.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from pathlib import Path

from qrun import progress as progress_mod
from qrun import registry, settings
from qrun.convert import manifest as mf
from qrun.convert import workspace as ws
from qrun.convert.plan import (
    CheckFreeDisk,
    Checkpoint,
    ConvertUnquantized,
    Disk,
    Download,
    KeepIntermediate,
    Quantize,
    RemoveIntermediate,
    Request,
    ReuseIntermediate,
    ReuseKept,
    Step,
    UpToDate,
    plan,
    reusable_types,
)
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
    progress_mod.say(message)  # above a progress bar being drawn, if any


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
    manifest = check.manifest
    if not check.ok or manifest is None:
        return None
    src = manifest.get("source") or {}
    if checkpoint_fingerprint is not None:
        wanted = src.get("fingerprint") == checkpoint_fingerprint
    elif revision is not None:
        wanted = src.get("hub") == source and revision in (src.get("requested_revision"), src.get("revision"))
    else:
        wanted = True
    if not wanted:
        return None
    if check.hashed:  # a copy (or a touched file) that matches and is kept: no need to hash it again next time
        mf.remember_verified(path, manifest)
    return manifest


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
        raise UsageError(
            "--keep-f16 keeps an F16 copy of a quantized model; BF16 is not quantized",
            "drop --keep-f16, or run `qrun convert --quant F16` as well",
        )
    if from_dir is not None and not Path(from_dir).expanduser().is_dir():
        # checked before the output folder is created, so a mistyped --from leaves no empty ./ggufs behind
        raise CheckpointError(
            f"checkpoint folder {Path(from_dir).expanduser().resolve()} does not exist",
            "pass the folder that holds config.json and the weights",
        )
    out = _output_dir(out_dir)
    request = Request(
        model=spec.name,
        quant=quant,
        out_dir=out,
        from_dir=None if from_dir is None else Path(from_dir),
        source=source,
        revision=revision,
        keep_f16=keep_f16,
        threads=threads,
    )
    with ws.output_lock(spec, out, say=_say):
        try:
            return _Execution(request, spec, progress).run()
        except QrunError:
            raise
        except OSError as err:  # the disk filled up, the folder turned read-only, a file vanished under us
            raise _file_system_error(err, out) from None


def _output_dir(out_dir: str | os.PathLike | None) -> Path:
    """The output folder, created; one-line errors for a path that cannot be a folder."""
    out = settings.gguf_dir(out_dir)
    named = "--ggufs" if out_dir else ("QRUN_GGUF_DIR" if os.environ.get("QRUN_GGUF_DIR") else "the output folder")
    hint = "choose a writable folder with --ggufs DIR (or QRUN_GGUF_DIR)"
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
        return DiskSpaceError(
            f"the disk filled up while writing {where}",
            "free some space or pass --ggufs DIR on a disk with more room, then rerun "
            "(a complete intermediate is reused)",
        )
    return ConversionError(
        f"cannot write {where}: {os_reason(err)}", "check the folder's permissions and free space, or pass --ggufs DIR"
    )


class _Execution:
    """Runs the steps of plan() for one request, once its output lock is held, with the real writers.

    Holds what the steps hand on: the checkpoint folder and its source, the unquantized GGUF to quantize from (kept
    output, reused or new intermediate), the measured step times, and the manifests installed.
    """

    def __init__(self, request: Request, spec: ModelSpec, progress: Progress | None):
        self.request, self.spec, self.progress = request, spec, progress
        self.final = self._output(request.quant)
        self.timings: dict = {}  # step -> wall time and peak memory; the manifests' "steps"
        self.up_to_date_manifest: dict | None = None
        self.checkpoint_dir: Path | None = None
        self.source_info: dict = {}
        self.kept_manifests: dict[str, dict] = {}  # type -> manifest of a kept output from this checkpoint
        self.markers: dict[str, dict] = {}  # type -> marker of a reusable intermediate
        self.base_type, self.base_path, self.base_size_bytes = "", Path(), 0
        self.installed: dict[Path, dict] = {}

    def _output(self, quant: str) -> Path:
        return self.request.out_dir / f"{self.spec.name}-{quant}.gguf"

    def _intermediate(self, weight_type: str) -> Path:
        return ws.intermediate_path(self.spec, self.request.out_dir, weight_type)

    def _current(self, path: Path, checkpoint_fingerprint: str | None, revision: str | None) -> dict | None:
        return _up_to_date(
            path, checkpoint_fingerprint=checkpoint_fingerprint, revision=revision, source=self.request.source
        )

    def run(self) -> dict:
        for leftover in ws.clean_stale_partials(self.spec, self.request.out_dir):
            _say(f"[convert] removed leftover of an interrupted run: {leftover.name}")
        steps = plan(self.request, self._observe_outputs())
        while steps:
            step = steps.pop(0)
            if isinstance(step, UpToDate):
                _say(f"[convert] {self.final.name} is up to date (matches its manifest)")
                return {**(self.up_to_date_manifest or {}), "status": "up_to_date", "path": str(self.final)}
            if isinstance(step, Download):
                steps = plan(self.request, self._download())
            else:
                self._do(step)
        result_manifest = self.installed.get(self.final) or mf.read_manifest(self.final) or {}
        _say(f"[convert] wrote {self.final}")
        return {**result_manifest, "status": "converted", "path": str(self.final)}

    def _observe_outputs(self) -> Disk:
        """Are the outputs asked for there? When they are not and the checkpoint is local, observe it too."""
        request = self.request
        local_dir = local_fingerprint = None
        if request.from_dir is not None:
            local_dir = request.from_dir.expanduser().resolve()
            if not local_dir.is_dir():
                raise CheckpointError(
                    f"checkpoint folder {local_dir} does not exist",
                    "pass the folder that holds config.json and the weights",
                )
            local_fingerprint = ws.fingerprint(local_dir, self.spec)
        done = self._current(self.final, local_fingerprint, request.revision)
        if done and request.keep_f16 and request.quant != "F16":
            if not self._current(self._output("F16"), local_fingerprint, request.revision):
                done = None
        self.up_to_date_manifest = done
        if done is not None:
            return Disk(outputs_up_to_date=True)
        if local_dir is None:
            return Disk()
        return self._observe_checkpoint(local_dir, {"kind": "local", "path": str(local_dir)})

    def _download(self) -> Disk:
        from qrun.convert.download import download_checkpoint

        with _measured(self.timings, "download"):
            result = download_checkpoint(self.spec, source=self.request.source, revision=self.request.revision)
        return self._observe_checkpoint(result.path, result.to_source())

    def _observe_checkpoint(self, checkpoint_dir: Path, source_info: dict) -> Disk:
        """What in the folder was made from these checkpoint files and can be used or must go."""
        fingerprint = ws.fingerprint(checkpoint_dir, self.spec)
        self.checkpoint_dir, self.source_info = checkpoint_dir, {**source_info, "fingerprint": fingerprint}
        checkpoint = Checkpoint(fingerprint=fingerprint, weight_type=ws.natural_weight_type(checkpoint_dir))
        # In the plan's order, stopping at the first: a kept output is hashed only when it could be used.
        for kept_type in reusable_types(self.request, checkpoint):
            kept = self._current(self._output(kept_type), fingerprint, None)
            if kept is not None:
                self.kept_manifests[kept_type] = kept
                break
        present = {
            t
            for t in settings.UNQUANTIZED
            if any(os.path.lexists(p) for p in (self._intermediate(t), ws.marker_path(self._intermediate(t))))
        }
        for weight_type in present:
            marker = ws.reusable_marker(self._intermediate(weight_type), fingerprint)
            if marker is not None:
                self.markers[weight_type] = marker
        quant_output_current = (
            self.request.quant not in settings.UNQUANTIZED and self._current(self.final, fingerprint, None) is not None
        )
        return Disk(
            checkpoint=checkpoint,
            quant_output_current=quant_output_current,
            kept=frozenset(self.kept_manifests),
            intermediates=frozenset(present),
            reusable=frozenset(self.markers),
        )

    def _do(self, step: Step) -> None:
        match step:
            case RemoveIntermediate(weight_type=weight_type):
                ws.remove_intermediate(self._intermediate(weight_type))
            case ReuseKept(weight_type=weight_type):
                self._reuse(
                    weight_type,
                    self._output(weight_type),
                    self.kept_manifests[weight_type].get("steps", {}).get("convert"),
                )
                _say(f"[convert] reusing {self.base_path.name}")
            case ReuseIntermediate(weight_type=weight_type):
                self._reuse(weight_type, self._intermediate(weight_type), self.markers[weight_type].get("convert_step"))
                _say(
                    f"[convert] reusing the complete {weight_type} intermediate {self.base_path.name} of an "
                    f"interrupted run"
                )
            case CheckFreeDisk(unquantized=unquantized, quant=quant):
                assert self.checkpoint_dir is not None  # observed before any plan asks for the disk check
                n_params = ws.estimate_params(self.checkpoint_dir)
                ws.check_free_disk(
                    self.request.out_dir,
                    unquantized_bytes=ws.estimate_gguf_bytes(n_params, unquantized) if unquantized else 0,
                    unquantized_type=unquantized or self.base_type,
                    output_bytes=ws.estimate_gguf_bytes(n_params, quant) if quant else 0,
                    quant=self.request.quant,
                )
            case ConvertUnquantized(weight_type=weight_type):
                self._convert(weight_type)
            case Quantize(quant=quant):
                self._quantize(quant)
            case KeepIntermediate(weight_type=weight_type):
                self._install(
                    self.base_path,
                    self._output(weight_type),
                    weight_type,
                    {k: v for k, v in self.timings.items() if k != "quantize"},
                )
                ws.remove_intermediate(self.base_path)

    def _reuse(self, weight_type: str, path: Path, convert_step: dict | None) -> None:
        self.base_type, self.base_path, self.base_size_bytes = weight_type, path, path.stat().st_size
        self.timings["convert"] = {**(convert_step or {}), "reused": True}

    def _convert(self, weight_type: str) -> None:
        from qrun.convert.converters import converter_for
        from qrun.convert.gguf_writer import write_gguf

        intermediate = self._intermediate(weight_type)
        assert self.checkpoint_dir is not None  # observed before any plan converts
        _say(f"[convert] {self.spec.name}: {self.checkpoint_dir} -> {weight_type} GGUF")
        with _measured(self.timings, "convert"):
            converter = converter_for(self.spec, self.checkpoint_dir, weight_type=weight_type)
            writer_info = write_gguf(converter, intermediate, progress=_step_progress(self.progress, "convert"))
        ws.write_marker(
            intermediate,
            checkpoint_fingerprint=self.source_info["fingerprint"],
            source=self.source_info,
            convert_step=self.timings["convert"],
            writer_info=writer_info,
        )
        self.base_type, self.base_path, self.base_size_bytes = weight_type, intermediate, intermediate.stat().st_size

    def _quantize(self, quant: str) -> None:
        from qrun.convert.quantize import quantize_gguf

        _say(f"[quantize] {self.base_path.name} -> {self.final.name} ({self.request.threads} threads)")
        staged = None
        try:
            with _measured(self.timings, "quantize"):
                staged = quantize_gguf(
                    self.base_path,
                    self.final,
                    quant,
                    threads=self.request.threads,
                    progress=self.progress,
                    commit=False,
                )
            self._install(staged, self.final, quant, self.timings)
        finally:
            if staged is not None:
                with contextlib.suppress(FileNotFoundError):
                    staged.unlink()  # still there only when hashing or installing it failed

    def _install(self, staged: Path, path: Path, file_quant: str, file_steps: dict) -> None:
        """Hash the finished `staged` file, then put it and its manifest in place of `path` and its manifest."""
        with _measured(file_steps, "hash"):
            digest = sha256_file(staged)
        manifest = mf.build_manifest(
            model=self.spec.name,
            quant=file_quant,
            gguf_path=staged,
            sha256=digest,
            source=self.source_info,
            unquantized_type=self.base_type,
            unquantized_size_bytes=self.base_size_bytes,
            steps=file_steps,
            threads=self.request.threads,
            gguf_name=path.name,
        )
        self.installed[path] = mf.install_gguf(staged, path, manifest)


def _step_progress(progress: Progress | None, step: str):
    """Adapt gguf_writer's progress(done_bytes, total_bytes, tensor) to progress(step, **info)."""
    if progress is None:
        return None

    def forward(done_bytes, total_bytes, tensor=""):
        progress(step, done_bytes=done_bytes, total_bytes=total_bytes, tensor=tensor)

    return forward
