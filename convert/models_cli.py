"""`qrun models`, `qrun show` and `qrun rm`: thin commands over qrun.convert.inventory (the GGUFs in a folder)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from qrun import registry, settings
from qrun.completion import complete_model, complete_quant
from qrun.convert import inventory
from qrun.convert import manifest as mf
from qrun.convert import workspace as ws
from qrun.convert.pipeline import find_converted
from qrun.errors import GGUFError, UsageError
from qrun.options import ggufs_option


def _size(n_bytes: int | None) -> str:
    if n_bytes is None:
        return "?"
    if n_bytes >= 1e8:
        return f"{n_bytes / 1e9:.2f} GB"
    return f"{n_bytes / 1e6:.1f} MB" if n_bytes >= 1e6 else f"{n_bytes / 1e3:.1f} kB"


@click.command("models")
@ggufs_option(help="Folder of converted models.")
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
    foreign = inventory.foreign_ggufs(folder)
    if as_json:
        click.echo(
            json.dumps({"ggufs_dir": str(folder), "models": rows, "foreign": foreign}, ensure_ascii=False, indent=2)
        )
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
    if foreign:
        click.echo(
            f"\nForeign GGUFs in {folder} (not made by `qrun convert`; run one with `qrun ask FILE --as MODEL`):"
        )
        click.echo(
            tabulate(
                [
                    (
                        Path(f["file"]).name,
                        f["architecture"] or f"unreadable: {f['error']}",
                        _size(f["size_bytes"]),
                        f["name"] or "",
                    )
                    for f in foreign
                ],
                headers=["file (foreign)", "arch", "size", "general.name"],
            )
        )
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


_GGUFS_OPTION = ggufs_option(help="Folder of converted models.")


@click.command("show")
@click.argument("model", shell_complete=complete_model)
@click.option(
    "--quant",
    metavar="QUANT",
    shell_complete=complete_quant,
    show_default="every converted one",
    help=f"Only this type: {', '.join(settings.QUANTS)}.",
)
@_GGUFS_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one entry per GGUF (manifests in full).")
def show_cmd(model, quant, ggufs_dir, as_json):
    """Show what a converted model (or any GGUF file) is: manifest, chat format, stop tokens, tensor types.

    \b
    qrun show qwen                     # every converted quant of Qwen-7B-Chat
    qrun show chatglm3 --quant Q8_0 --json
    qrun show ~/Downloads/other.gguf   # a GGUF from elsewhere: header only (no manifest, model not guessed)
    """
    infos = inventory.describe(model, quant=quant, ggufs_dir=ggufs_dir)
    if as_json:
        click.echo(json.dumps(infos, ensure_ascii=False, indent=2))
        return
    click.echo("\n\n".join(_show_text(info) for info in infos))


def _source_text(source: dict | None) -> str:
    if not source:
        return "unknown (no manifest)"
    if source.get("kind") == "local":
        return f"local folder {source.get('path')}"
    if source.get("kind") == "hub":
        hub = {"modelscope": "ModelScope", "hf": "Hugging Face"}.get(str(source.get("hub")), source.get("hub"))
        asked = source.get("requested_revision")
        return (
            f"{hub} {source.get('repo_id')} revision {source.get('revision')}"
            + (f" (asked for {asked})" if asked and asked != source.get("revision") else "")
            + f", cached at {source.get('path')}"
        )
    return json.dumps(source, ensure_ascii=False)


def _show_text(info: dict) -> str:
    from tabulate import tabulate

    m = info["manifest"]
    manifest = m["data"] or {}
    head = "  ".join(part for part in (info["model"] or "foreign GGUF", info["quant"], info["file"]) if part)
    if m["status"] == "missing":
        manifest_line = "none" + (
            " — not made by `qrun convert`: its model is not guessed (run it with `qrun ask FILE --as MODEL`)"
            if info["foreign"]
            else f" ({m['note']})"
        )
    else:
        manifest_line = f"{Path(m['file']).name}, {m['size_bytes']} bytes, {m['status']}" + (
            f" ({m['note']})" if m["note"] and m["status"] != "ok" else ""
        )
    lines = [
        ("file", f"{_size(info['size_bytes'])} ({info['size_bytes']} bytes)"),
        ("manifest", manifest_line),
        ("source", _source_text(info["source"])),
        ("architecture", f"{info['architecture']} (GGUF v{info['gguf_version']}), context {info['context_length']}"),
    ]
    if info["general_name"]:
        lines.append(("general.name", info["general_name"]))
    if info["foreign"]:
        lines.append(("chat format", "unknown (foreign GGUF)"))
    else:
        system = info["default_system"]
        lines.append(("chat format", info["chat_format"] + (f", default system {system!r}" if system else "")))
        lines.append(("stop tokens", ", ".join(f"{t['id']} {t['text']}" for t in info["stop_tokens"])))
    lines.append(
        (
            "weights",
            f"{info['params']:,} parameters in {info['tensor_count']} tensors, "
            f"{info['bits_per_weight']:.2f} bits/weight",
        )
    )
    if manifest.get("unquantized_type"):
        lines.append(
            ("quantized from", f"{manifest['unquantized_type']} ({_size(manifest.get('unquantized_size_bytes'))})")
        )
    if manifest.get("versions"):
        made = ", ".join(f"{k} {v}" for k, v in manifest["versions"].items() if v)
        lines.append(("made by", f"{made} on {manifest.get('created')}"))
    if manifest.get("steps"):
        steps = ", ".join(f"{name} {step.get('wall_s', 0):.1f} s" for name, step in manifest["steps"].items())
        lines.append(("steps", steps))
    if manifest.get("sha256"):
        lines.append(("sha256", manifest["sha256"]))
    types = tabulate(
        [
            (name, t["tensors"], f"{t['params']:,}", f"{t['bits_per_weight']:.2f}")
            for name, t in info["tensor_types"].items()
        ],
        headers=["type", "tensors", "parameters", "bits/weight"],
        disable_numparse=True,
    )
    body = "\n".join(f"  {key:<15} {value}" for key, value in lines)
    return head + "\n" + body + "\n  tensor types:\n" + "\n".join("    " + line for line in types.splitlines())


@click.command("rm")
@click.argument("model", shell_complete=complete_model)
@click.option(
    "--quant",
    metavar="QUANT",
    shell_complete=complete_quant,
    show_default="every type, and the F16/BF16 intermediates",
    help="Only this type.",
)
@_GGUFS_OPTION
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (needed when stdin is not a terminal).")
@click.option("--json", "as_json", is_flag=True, help='Print {"deleted": [paths]} instead of a line per file.')
def rm_cmd(model, quant, ggufs_dir, yes, as_json):
    """Remove a converted model's GGUF and manifest (every quant, or the one given).

    \b
    qrun rm qwen --quant Q8_0          # asks, then deletes qwen-7b-chat-Q8_0.gguf and .json
    qrun rm chatglm3 --yes             # every chatglm3-6b file in the folder, without asking
    """

    def confirm(paths: list[Path]) -> bool:
        if yes:
            return True
        # asked here, once the model, quant and files are known good: a typo is reported before "add --yes"
        if not sys.stdin.isatty():
            raise UsageError("qrun rm asks before deleting, and stdin is not a terminal", "add --yes to delete anyway")
        for path in paths:
            click.echo(f"  {path}  ({_size(path.stat().st_size)})", err=True)
        return click.confirm(f"Delete these {len(paths)} file(s)?", default=False, err=True)

    removed = inventory.remove_model(model, quant=quant, ggufs_dir=ggufs_dir, confirm=confirm)
    if as_json:
        click.echo(json.dumps({"deleted": [str(path) for path in removed]}, ensure_ascii=False, indent=2))
        return
    if not removed:
        click.echo("Nothing deleted.", err=True)
        return
    for path in removed:
        click.echo(f"deleted {path}")
