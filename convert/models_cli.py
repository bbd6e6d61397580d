"""`qrun models`: thin commands over the converted GGUFs in a folder."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from qrun import registry, settings
from qrun.convert import manifest as mf
from qrun.convert import workspace as ws
from qrun.convert.cli import _size
from qrun.convert.pipeline import find_converted
from qrun.errors import GGUFError, UsageError


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
