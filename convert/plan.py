"""What a conversion will do, decided before anything is written: plan(request, disk) -> steps.

plan() reads nothing but its arguments (no files, no clock), so every combination of --quant, --keep-f16 and what
earlier runs left in the output folder is checked as a table (tests/test_convert_plan.py). pipeline.py observes the
folder under the model's output lock, builds a Disk, and runs the steps with the real writers.

A download ends a plan: what follows depends on the files it brings (their fingerprint, their weight type), so the
executor observes them and plans again. A local checkpoint (--from) is observed before the first plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qrun import settings


@dataclass(frozen=True)
class Request:
    """One `qrun convert`, its arguments checked (canonical model name, known QUANT, threads resolved)."""

    model: str
    quant: str
    out_dir: Path
    from_dir: Path | None = None  # local checkpoint folder, resolved; None = download from `source`
    source: str = "modelscope"
    revision: str | None = None
    keep_f16: bool = False
    threads: int = 1


@dataclass(frozen=True)
class Checkpoint:
    """The checkpoint files on disk, as far as the plan needs them."""

    fingerprint: str  # workspace.fingerprint(): names, sizes and mtimes of the files conversion reads
    weight_type: str  # workspace.natural_weight_type(): "BF16" when every matrix is bf16, else "F16"


@dataclass(frozen=True)
class Disk:
    """What the output folder holds, observed under the model's output lock.

    The last four fields are known only with `checkpoint`: they compare files with those checkpoint files.
    """

    # The outputs asked for (the QUANT file, and with --keep-f16 the F16 one) match their manifests and came from
    # what was asked for (workspace.fingerprint of --from, the --revision, or any complete output otherwise).
    outputs_up_to_date: bool = False
    checkpoint: Checkpoint | None = None  # None: not on disk yet, to be downloaded
    quant_output_current: bool = False  # <name>-<QUANT>.gguf matches its manifest and came from `checkpoint`
    kept: frozenset[str] = frozenset()  # F16/BF16 outputs <name>-<T>.gguf that do too
    intermediates: frozenset[str] = frozenset()  # types with an intermediate (file or marker) in the folder
    reusable: frozenset[str] = frozenset()  # of those, complete (marker matches) and made from `checkpoint`


@dataclass(frozen=True)
class UpToDate:
    """Report the outputs asked for; write nothing."""


@dataclass(frozen=True)
class Download:
    """Fetch the checkpoint from the hub (then observe it and plan again)."""


@dataclass(frozen=True)
class RemoveIntermediate:
    """Delete the intermediate of this type and its marker: stale, incomplete, or quantized and done with."""

    weight_type: str


@dataclass(frozen=True)
class ReuseKept:
    """Quantize from the kept output <name>-<T>.gguf of an earlier run instead of converting."""

    weight_type: str


@dataclass(frozen=True)
class ReuseIntermediate:
    """Quantize from the complete intermediate an interrupted run left instead of converting."""

    weight_type: str


@dataclass(frozen=True)
class CheckFreeDisk:
    """Fail before writing when the disk lacks room for the files still to be written (None: not written)."""

    unquantized: str | None
    quant: str | None


@dataclass(frozen=True)
class ConvertUnquantized:
    """Write the checkpoint as an F16/BF16 intermediate GGUF (qrun's own converter) with its marker."""

    weight_type: str


@dataclass(frozen=True)
class Quantize:
    """Quantize the unquantized GGUF with llama.cpp into <name>-<QUANT>.gguf and install it with its manifest."""

    quant: str


@dataclass(frozen=True)
class KeepIntermediate:
    """Install the intermediate as the output <name>-<T>.gguf with its manifest."""

    weight_type: str


Step = (
    UpToDate
    | Download
    | RemoveIntermediate
    | ReuseKept
    | ReuseIntermediate
    | CheckFreeDisk
    | ConvertUnquantized
    | Quantize
    | KeepIntermediate
)


def base_type(request: Request, checkpoint: Checkpoint) -> str:
    """The unquantized type a run writes: what --quant asks for, F16 when it must be kept, else the checkpoint's."""
    if request.quant in settings.UNQUANTIZED:
        return request.quant
    return "F16" if request.keep_f16 else checkpoint.weight_type


def reusable_types(request: Request, checkpoint: Checkpoint) -> list[str]:
    """Kept F16/BF16 outputs a run may quantize from, best first: only the type it must keep when it keeps one,
    else its own type, then either (both quantize to the same QUANT)."""
    own = base_type(request, checkpoint)
    if request.quant in settings.UNQUANTIZED or request.keep_f16:
        return [own]
    return list(dict.fromkeys([own, *settings.UNQUANTIZED]))


def plan(request: Request, disk: Disk) -> list[Step]:
    """The steps that take the folder in `disk` to the outputs `request` asks for, in order."""
    if disk.outputs_up_to_date:
        return [UpToDate()]
    if disk.checkpoint is None:
        return [Download()]
    own = base_type(request, disk.checkpoint)
    steps: list[Step] = [RemoveIntermediate(t) for t in settings.UNQUANTIZED if t in disk.intermediates and t != own]
    kept = next((t for t in reusable_types(request, disk.checkpoint) if t in disk.kept), None)
    convert = False
    if kept is not None:
        steps.append(ReuseKept(kept))
    elif own in disk.reusable:
        steps.append(ReuseIntermediate(own))
    else:
        convert = True
        if own in disk.intermediates:
            steps.append(RemoveIntermediate(own))
    quantize = request.quant not in settings.UNQUANTIZED and not disk.quant_output_current
    steps.append(CheckFreeDisk(unquantized=own if convert else None, quant=request.quant if quantize else None))
    if convert:
        steps.append(ConvertUnquantized(own))
    if quantize:
        steps.append(Quantize(request.quant))
    if kept is None:  # quantized from the intermediate: it becomes an output or goes
        keep = request.keep_f16 or request.quant in settings.UNQUANTIZED
        steps.append(KeepIntermediate(own) if keep else RemoveIntermediate(own))
    return steps
