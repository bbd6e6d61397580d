"""`qrun convert` and `qrun models`: thin commands over qrun.convert.pipeline."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from qrun import registry, settings
from qrun.completion import complete_model, complete_quant
from qrun.convert import manifest as mf
from qrun.convert import workspace as ws
from qrun.convert.download import SOURCES
from qrun.convert.pipeline import convert_model, find_converted
from qrun.errors import ConversionError, GGUFError, QrunError, UsageError


class StderrProgress:
    """Per-tensor progress of a step as one line about every second (and at the end) on stderr."""

    def __init__(self, interval_s: float = 1.0):
        self.interval_s = interval_s
        self._last_s = 0.0

    def __call__(self, step: str, **info) -> None:
        if "done_bytes" in info:
            done, total = info["done_bytes"], info["total_bytes"]
            what = f"{done / 1e6:.0f}/{total / 1e6:.0f} MB"
        else:
            done, total = info.get("done"), info.get("total")
            what = f"{done}/{total} tensors"
        now = time.monotonic()
        if done != total and now - self._last_s < self.interval_s:
            return
        self._last_s = now
        click.echo(f"[{step}] {what} {info.get('tensor', '')}".rstrip(), err=True)


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
@click.option(
    "--ggufs",
    "ggufs_dir",
    metavar="DIR",
    type=click.Path(file_okay=False),
    show_default="QRUN_GGUF_DIR, then ./ggufs",
    help="Folder the GGUFs and their manifests are written to.",
)
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
                progress=StderrProgress(),
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


@click.command("models")
@click.option(
    "--ggufs",
    "ggufs_dir",
    metavar="DIR",
    type=click.Path(file_okay=False),
    help="Folder of converted models [default: QRUN_GGUF_DIR, then ./ggufs].",
)
@click.option(
    "--verify",
    is_flag=True,
    help="Hash every GGUF and compare it with its manifest's sha256; exit 1 "
    "when any does not match (a match is remembered: copies then list as ok).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the registry and local files as JSON.")
def models_cmd(ggufs_dir, verify, as_json):
    """List the supported models and which of them are converted locally.

    \b
    qrun models                    # names, aliases, hub ids, architecture, chat format, local GGUFs
    qrun models --ggufs /data/ggufs --json
    qrun models --verify           # after copying GGUFs: check them against their manifests' sha256
    """
    folder = settings.gguf_dir(ggufs_dir)
    local: dict[str, list[dict]] = {}
    failed = []
    for spec, quant, path, _ in find_converted(folder):
        check = mf.check_manifest(path, hash_always=verify)
        if check.hashed and check.ok:
            _remember_verified(spec, folder, path, check.manifest)
        if verify and not check.ok:
            failed.append(f"{path.name} ({check.status}: {check.reason})")
        local.setdefault(spec.name, []).append(
            {
                "file": str(path),
                "quant": quant,
                "size_bytes": path.stat().st_size,
                "manifest": check.status,
                "manifest_note": check.reason,
            }
        )
    rows = [
        {
            "name": spec.name,
            "aliases": list(spec.aliases),
            "modelscope_id": spec.modelscope_id,
            "hf_id": spec.hf_id,
            "hf_architecture": spec.hf_architecture,
            "gguf_arch": spec.gguf_arch,
            "chat_format": spec.chat_format,
            "converted": local.get(spec.name, []),
        }
        for spec in registry.MODELS
    ]
    if as_json:
        click.echo(json.dumps({"ggufs_dir": str(folder), "models": rows}, ensure_ascii=False, indent=2))
        _verify_outcome(failed)
        return
    from tabulate import tabulate

    click.echo(
        tabulate(
            [
                (r["name"], ", ".join(r["aliases"]), r["modelscope_id"], r["hf_id"], r["gguf_arch"], r["chat_format"])
                for r in rows
            ],
            headers=["model", "aliases", "ModelScope", "Hugging Face", "arch", "chat format"],
        )
    )
    click.echo(f"\nConverted in {folder}:")
    files = [
        (
            r["name"],
            f["quant"],
            _size(f["size_bytes"]),
            f["manifest"] + (f" ({f['manifest_note']})" if f["manifest"] != "ok" else ""),
            Path(f["file"]).name,
        )
        for r in rows
        for f in r["converted"]
    ]
    if files:
        click.echo(tabulate(files, headers=["model", "quant", "size", "manifest", "file"]))
    else:
        click.echo("  nothing yet: qrun convert MODEL")
    sys.stdout.flush()
    _verify_outcome(failed)


def _remember_verified(spec, folder: Path, path: Path, manifest: dict) -> None:
    """Save a successful verification in the manifest, unless a convert of the model is running (it owns the
    manifests then) or the folder is read-only (the next --verify hashes again)."""
    try:
        with ws.output_lock(spec, folder, say=lambda _msg: None, wait=False) as held:
            if held:
                mf.remember_verified(path, manifest)
    except UsageError:
        pass


def _verify_outcome(failed: list[str]) -> None:
    if failed:
        raise GGUFError(
            f"{len(failed)} GGUF file(s) do not match their manifests: {'; '.join(failed)}",
            "re-create them with `qrun convert MODEL --quant QUANT` (or copy them again)",
        )
