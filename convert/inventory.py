"""What a GGUF folder holds, what one GGUF is, and removing a model's files: the library of `qrun models`, `qrun show`
and `qrun rm`.

A GGUF qrun made is `<name>-<QUANT>.gguf` with its manifest `<name>-<QUANT>.json` beside it (convert/manifest.py).
Any other valid GGUF in the folder is "foreign": listed with its architecture and size, never matched to a model
(general.architecture "llama" is DeepSeek's and that of thousands of other models; see runner/engine.py
spec_for_header, which asks for --as instead of guessing).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from qrun import registry, settings
from qrun.convert import manifest as mf
from qrun.convert import workspace as ws
from qrun.convert.pipeline import find_converted
from qrun.errors import GGUFError, NotConvertedError, UsageError
from qrun.fsutil import os_reason
from qrun.gguf_file import read_header, token_ids
from qrun.registry import ModelSpec

_GGUF_MAGIC_BYTES = b"GGUF"


def _is_path(model_or_path: str) -> bool:
    """The rule ask and chat use (runner/resolve.py is_path): a .gguf name, a path separator, or an existing file."""
    return model_or_path.lower().endswith(".gguf") or os.sep in model_or_path or Path(model_or_path).is_file()


def _has_gguf_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == _GGUF_MAGIC_BYTES
    except OSError:
        return False


def foreign_ggufs(ggufs_dir: str | os.PathLike | None = None) -> list[dict]:
    """GGUF files in the folder that `qrun convert` did not name: neither `<model>-<QUANT>.gguf` nor an intermediate.

    Files without GGUF magic bytes are not GGUFs and are left out; a GGUF whose header cannot be read (a cut
    download) is listed with the reason in "error".

    Returns:
        One dict per file, by name: file, size_bytes, architecture, name (general.name), qrun_model (the
        "qrun.model" key when a qrun GGUF was renamed), error.
    """
    folder = settings.gguf_dir(ggufs_dir)
    if not folder.is_dir():
        return []
    ours = {path.name for _spec, _quant, path, _manifest in find_converted(folder)}
    found = []
    for path in sorted(folder.glob("*.gguf")):
        if path.name in ours or path.name.endswith(".intermediate.gguf") or not path.is_file():
            continue
        if not _has_gguf_magic(path):
            continue
        entry: dict = {"file": str(path), "size_bytes": path.stat().st_size}
        try:
            header = read_header(path)
        except GGUFError as err:
            entry.update(architecture=None, name=None, qrun_model=None, error=err.message)
        else:
            entry.update(
                architecture=header.architecture,
                name=header.metadata.get("general.name"),
                qrun_model=header.metadata.get("qrun.model"),
                error=None,
            )
        found.append(entry)
    return found


def model_files(spec: ModelSpec, folder: Path, quant: str | None) -> list[Path]:
    """What qrun keeps of a model in `folder`: each quant's GGUF and manifest (a manifest left without its GGUF
    counts too), and without `quant` also the F16/BF16 intermediates of interrupted or --keep-f16 runs and their
    markers."""
    quants = [quant] if quant else list(settings.QUANTS)
    paths = []
    for q in quants:
        gguf = folder / f"{spec.name}-{q}.gguf"
        paths += [gguf, mf.manifest_path_for(gguf)]
    if quant is None:
        for intermediate in ws.intermediate_paths(spec, folder):
            paths += [intermediate, ws.marker_path(intermediate)]
    return [path for path in paths if path.is_file()]


def remove_model(
    model: str,
    *,
    quant: str | None = None,
    ggufs_dir: str | os.PathLike | None = None,
    confirm: Callable[[list[Path]], bool] = lambda _paths: True,
) -> list[Path]:
    """Delete a model's GGUF(s) and manifest(s) under the model's output lock (workspace.output_lock, the one
    `qrun convert` holds while it writes), so a running convert never loses a file it is writing or has just
    written, and nothing is deleted while it runs.

    Args:
        quant: one type; None = every type, and the intermediates.
        confirm: called with the files about to go, while the lock is held; False = delete nothing.

    Returns:
        The files deleted (empty when `confirm` said no).

    Raises:
        NotConvertedError: nothing of the model (and quant) is in the folder.
        UsageError: a convert of the model is running in the folder, or a file cannot be deleted.
    """
    spec = registry.get(model)
    quant = settings.check_quant(quant) if quant is not None else None
    folder = settings.gguf_dir(ggufs_dir)
    what = f"{spec.name}" + (f" {quant}" if quant else "")
    if not model_files(spec, folder, quant):
        raise NotConvertedError(f"no {what} files in {folder}", "`qrun models` lists what is there (--ggufs DIR)")
    with ws.output_lock(spec, folder, say=lambda _msg: None, wait=False) as held:
        if not held:
            raise UsageError(
                f"a `qrun convert` of {spec.name} is writing in {folder}; nothing was removed",
                "wait for it to finish (or stop it), then run `qrun rm` again",
            )
        paths = model_files(spec, folder, quant)
        if not paths or not confirm(paths):
            return []
        removed: list[Path] = []
        # each GGUF before its manifest: a run stopped between the two leaves a manifest without its file, which
        # model_files() still lists, so `qrun rm` again finishes the job
        for path in paths:
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as err:
                raise UsageError(
                    f"cannot delete {path}: {os_reason(err)}"
                    + (f" (deleted before it: {', '.join(p.name for p in removed)})" if removed else ""),
                    "check the folder's permissions",
                ) from None
            removed.append(path)
    return removed


def describe(model_or_path: str, *, quant: str | None = None, ggufs_dir: str | os.PathLike | None = None) -> list[dict]:
    """What `qrun show` prints for a model name (each converted quant, or the one asked for) or a GGUF path.

    Raises:
        UnknownModelError: neither a path nor a registry name.
        NotConvertedError: a model without a GGUF (of that quant) in the folder.
        GGUFError: a path that is not a readable GGUF.
    """
    if _is_path(model_or_path):
        if quant is not None:
            raise UsageError("--quant picks one of a model's GGUFs; a path names the file itself", "drop --quant")
        return [describe_file(Path(model_or_path).expanduser())]
    spec = registry.get(model_or_path)
    quant = settings.check_quant(quant) if quant is not None else None
    folder = settings.gguf_dir(ggufs_dir)
    paths = [path for s, q, path, _m in find_converted(folder) if s is spec and quant in (None, q)]
    if not paths:
        command = f"qrun convert {spec.name}" + (f" --quant {quant}" if quant else "")
        raise NotConvertedError(
            f"{spec.name}{' ' + quant if quant else ''} is not converted in {folder}", f"run `{command}`"
        )
    return [describe_file(path, spec=spec) for path in paths]


def describe_file(path: Path, *, spec: ModelSpec | None = None) -> dict:
    """Everything known about one GGUF: its header (architecture, context, tensor types, bits per weight), the
    model and chat format it holds with its stop tokens resolved in its own vocabulary, and its manifest (source,
    versions, steps) with whether that manifest still describes the file.

    spec: the model the file is named after; None = the "qrun.model" key the converter writes, if any (a GGUF
    without it is foreign: its model is not guessed).

    Raises:
        GGUFError: not a readable GGUF.
    """
    header = read_header(path)
    if spec is None:
        name = header.metadata.get("qrun.model")
        spec = registry.get(name) if isinstance(name, str) and name in registry.names() else None
    check = mf.check_manifest(path)
    manifest = check.manifest
    info: dict = {
        "file": str(path),
        "size_bytes": path.stat().st_size,
        "model": spec.name if spec else None,
        "foreign": spec is None,
        "quant": (manifest or {}).get("quant") or _quant_from_name(path, spec),
        "architecture": header.architecture,
        "general_name": header.metadata.get("general.name"),
        "gguf_version": header.version,
        "context_length": header.context_length,
        **mf.tensor_summary(path),
        "manifest": {
            "file": str(mf.manifest_path_for(path)),
            "status": check.status,
            "note": check.reason,
            "size_bytes": _size_or_none(mf.manifest_path_for(path)),
            "data": manifest,
        },
        "source": (manifest or {}).get("source"),
    }
    if spec is None:
        info.update(chat_format=None, default_system=None, stop_tokens=[])
        return info
    ids = token_ids(path, spec.stop_tokens)
    info.update(
        chat_format=spec.chat_format,
        default_system=spec.default_system,
        generation=vars(spec.generation),
        stop_tokens=[{"id": ids[text], "text": text} for text in spec.stop_tokens],
    )
    missing = [text for text in spec.stop_tokens if ids[text] is None]
    if missing:  # the runner refuses this file too (runner/engine.py token_id)
        raise GGUFError(
            f"{path.name}'s vocabulary has no stop token {missing[0]!r} of {spec.name}",
            "it is not a GGUF of that model; re-create it with `qrun convert`",
        )
    return info


def _quant_from_name(path: Path, spec: ModelSpec | None) -> str | None:
    if spec is None:
        return None
    prefix = f"{spec.name}-"
    stem = path.name.removesuffix(".gguf")
    return stem[len(prefix) :] if stem.startswith(prefix) and stem[len(prefix) :] in settings.QUANTS else None


def _size_or_none(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None
