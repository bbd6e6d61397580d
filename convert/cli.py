"""`qrun convert`: a thin command over qrun.convert.pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import click

from qrun import registry, settings
from qrun.completion import complete_model, complete_quant
from qrun.convert.download import SOURCES
from qrun.convert.pipeline import convert_model
from qrun.errors import ConversionError, QrunError, UsageError
from qrun.options import ggufs_option
from qrun.progress import StepBars


def _size(n_bytes: int | None) -> str:
    if n_bytes is None:
        return "?"
    return f"{n_bytes / 1e9:.2f} GB" if n_bytes >= 1e8 else f"{n_bytes / 1e6:.1f} MB"


def _summary(result: dict) -> str:
    steps = result.get("steps") or {}
    wall_s = sum(s.get("wall_s", 0.0) for s in steps.values() if not s.get("reused"))
    state = "up to date" if result.get("status") == "up_to_date" else f"converted in {wall_s:.1f} s"
    bpw = result.get("bits_per_weight")
    return (
        f"{result.get('model')}  {result.get('quant')}  {_size(result.get('size_bytes'))}"
        f"  {bpw} bits/weight  {state}  {result.get('path')}"
    )


@click.command("convert")
@click.argument("models", nargs=-1, shell_complete=complete_model)
@click.option("--from", "from_dir", metavar="DIR", help="Convert a local checkpoint folder (exactly one MODEL).")
@click.option(
    "--source",
    default="modelscope",
    show_default=True,
    metavar="modelscope|hf",
    help="Hub to download from when --from is not given.",
)
@click.option("--revision", metavar="REV", help="Hub branch, tag or commit to download (recorded in the manifest).")
@click.option(
    "--quant",
    default=settings.DEFAULT_QUANT,
    show_default=True,
    metavar="QUANT",
    shell_complete=complete_quant,
    help=f"Output type: {', '.join(settings.QUANTS)}.",
)
@ggufs_option(help="Folder the GGUFs and their manifests are written to.")
# the GGUF folder's earlier name here (every other command says --ggufs); still read, with a notice
@click.option("--out", "out_dir", metavar="DIR", type=click.Path(file_okay=False), hidden=True)
@click.option(
    "--keep-f16",
    is_flag=True,
    help="Also keep an F16 GGUF (the quantized file is then made from it; "
    "without this flag a bf16 checkpoint goes through an exact BF16 intermediate that is deleted).",
)
@click.option(
    "--threads",
    type=int,
    default=None,
    metavar="N",
    show_default="physical cores",
    help="Quantizer threads, one number.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the manifests as a JSON list on stdout.")
def convert_cmd(models, from_dir, source, revision, quant, ggufs_dir, out_dir, keep_f16, threads, as_json):
    """Convert checkpoints to GGUF and quantize them (default Q4_K_M); no MODEL = all three.

    \b
    qrun convert chatglm3                          # download from ModelScope, write ggufs/chatglm3-6b-Q4_K_M.gguf
    qrun convert qwen --source hf --revision main  # from Hugging Face, pinned revision
    qrun convert deepseek --from ~/ckpt/deepseek-llm-7b-chat --quant Q8_0 --keep-f16
    qrun convert --json > manifests.json           # all three; progress on stderr, manifests on stdout
    qrun convert qwen --ggufs /data/ggufs          # write into another folder (also: QRUN_GGUF_DIR)
    """
    ggufs_dir = _ggufs_or_out(ggufs_dir, out_dir)
    specs = [registry.get(name) for name in models] or list(registry.MODELS)
    if from_dir is not None and len(models) != 1:
        raise UsageError(
            f"--from needs exactly one MODEL, got {len(models)}",
            "name the model the folder holds, e.g. qrun convert chatglm3 --from DIR",
        )
    if source not in SOURCES:
        raise UsageError(f"unknown --source {source!r}", f"use one of: {', '.join(SOURCES)}")
    quant = settings.check_quant(quant)
    if threads is not None and threads < 0:
        raise UsageError(f"--threads must be >= 0, got {threads}", "0 means all physical cores")
    if keep_f16 and quant == "BF16":
        raise UsageError(
            "--keep-f16 keeps an F16 copy of a quantized model; BF16 is not quantized",
            "drop --keep-f16, or run `qrun convert --quant F16` as well",
        )
    results, failed = [], []
    for spec in dict.fromkeys(specs):
        try:
            result = convert_model(
                spec.name,
                from_dir=from_dir,
                source=source,
                revision=revision,
                quant=quant,
                out_dir=ggufs_dir,
                keep_f16=keep_f16,
                threads=threads,
                progress=StepBars(),  # bars with ETA on a terminal, whole lines in a log (qrun.progress)
            )
        except QrunError as err:
            if len(specs) == 1:
                raise
            # one model's failure (a download, a full disk) must not cost the others their conversion
            click.echo(f"Error: {spec.name}: {err.one_line()}", err=True)
            failed.append(spec.name)
            continue
        results.append(result)
        if not as_json:
            click.echo(_summary(result))
    if as_json:
        click.echo(json.dumps(results, ensure_ascii=False, indent=2))
    if failed:
        raise ConversionError(
            f"{len(failed)} of {len(specs)} models failed: {', '.join(failed)}",
            "see the error line of each above; rerun `qrun convert` to retry only what is missing",
        )


def _ggufs_or_out(ggufs_dir: str | None, out_dir: str | None) -> str | None:
    """--ggufs, or the deprecated --out it replaces (one notice on stderr); both only when they agree."""
    if out_dir is None:
        return ggufs_dir
    if ggufs_dir is not None and Path(ggufs_dir).expanduser() != Path(out_dir).expanduser():
        raise UsageError(
            f"--out {out_dir!r} and --ggufs {ggufs_dir!r} name two folders",
            "give only --ggufs DIR (--out is its old name)",
        )
    click.echo("note: `qrun convert --out` is now --ggufs, as in every other command; --out still works", err=True)
    return out_dir
