"""Command `qrun tune`: a thin layer over qrun.bench.tune (register with `from qrun.bench.tune_cli import tune_cmd`)."""

from __future__ import annotations

import json
import shlex
import sys

import click
from tabulate import tabulate

from qrun import measure
from qrun.completion import complete_model, complete_quant
from qrun.options import ggufs_option


def _ints(value: str | None, option: str) -> list[int] | None:
    from qrun import settings

    return settings.check_thread_list(value, flag=option, zero_ok=False) or None


def _kv_types(value: str | None) -> list[str] | None:
    from qrun.runner.resolve import check_kv_type

    if not value:
        return None
    return [kv for part in value.split(",") if (kv := check_kv_type(part)) is not None]


@click.command("tune")
@click.argument("models", nargs=-1, shell_complete=complete_model)
@click.option(
    "--quant",
    "quants",
    multiple=True,
    metavar="Q[,Q...]",
    shell_complete=complete_quant,
    show_default="every converted 4-bit type of the model",
    help="GGUF types to compare, a list (repeatable).",
)
@click.option(
    "--threads",
    default=None,
    metavar="N[,N...]",
    show_default="the physical core count and one less",
    help="Thread counts to try, a list such as 1,2.",
)
@click.option(
    "--threads-batch",
    default=None,
    metavar="N[,N...]",
    show_default="the --threads values",
    help="Prompt-processing thread counts to try, a list.",
)
@click.option("--repack/--no-repack", default=None, show_default="both", help="Measure only this repacking setting.")
@click.option("--mmap/--no-mmap", default=None, show_default="both", help="Measure only this mmap setting.")
@click.option(
    "--flash-attn/--no-flash-attn",
    default=None,
    show_default="both",
    help="Measure only this flash-attention setting.",
)
@click.option(
    "--kv-type",
    "kv_types",
    default=None,
    metavar="T[,T...]",
    show_default="both",
    help="KV cache types to try: f16, q8_0 (q8_0 only with flash attention).",
)
@click.option("--repeat", default=3, show_default=True, type=int, help="Measured repetitions per grid point.")
@click.option("--force", is_flag=True, help="Measure even when the machine is busy (load average above 0.5/CPU).")
@ggufs_option()
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='Print the tuning profile document (plus "profile_path") on stdout instead of the tables.',
)
def tune_cmd(
    models, quants, threads, threads_batch, repack, mmap, flash_attn, kv_types, repeat, force, ggufs_dir, as_json
):
    """Measure load settings on this machine and save the fastest per model in qrun's tuning profile.

    \b
    qrun tune                              # every converted model, full grid, 3 repetitions
    qrun tune chatglm3 --quant Q4_0,Q4_K_M --threads 2 --repeat 5
    Afterwards `qrun ask/chat/bench` use the profile's "chat" settings; flags still override it.
    """
    from qrun.bench import tune

    quant_list = [q.strip() for value in quants for q in value.split(",") if q.strip()]
    command = " ".join(["qrun", "tune", *map(shlex.quote, sys.argv[2:])]) if len(sys.argv) > 1 else "qrun tune"
    doc, path = tune.run_tune(
        models,
        quants=quant_list or None,
        threads=_ints(threads, "--threads"),
        threads_batch=_ints(threads_batch, "--threads-batch"),
        repack=repack,
        use_mmap=mmap,
        flash_attn=flash_attn,
        kv_types=_kv_types(kv_types),
        repeat=repeat,
        force=force,
        ggufs_dir=ggufs_dir,
        command=command,
    )
    if as_json:  # stdout is the document alone; progress went to stderr
        click.echo(json.dumps({**doc, "profile_path": str(path)}, ensure_ascii=False, indent=2))
        return
    rows = []
    for model, entry in doc["models"].items():
        for workload in tune.WORKLOADS:
            if workload not in entry:
                continue
            ev, st = entry[workload]["evidence"], entry[workload]["settings"]
            metric = ev[ev["metric"]]
            rows.append(
                [
                    model,
                    workload,
                    st["quant"],
                    "on" if st["repack"] else "off",
                    "on" if st["use_mmap"] else "off",
                    st["n_threads"],
                    st["n_threads_batch"],
                    "on" if st.get("flash_attn") else "off",
                    st.get("kv_type", "f16"),
                    f"{metric['median']:.1f} ({metric['min']:.1f}-{metric['max']:.1f})",
                    f"{ev['peak_rss_bytes']['median'] / 2**20:.0f}",
                    f"{ev['load_s']['median']:.2f}",
                    measure.noise_mark(ev.get("noise")),
                    (ev.get("decision") or {}).get("reason", ""),
                ]
            )
    click.echo(
        tabulate(
            rows,
            headers=[
                "model",
                "workload",
                "quant",
                "repack",
                "mmap",
                "threads",
                "threads_batch",
                "flash attn",
                "KV",
                "tok/s median (range)",
                "peak RSS MiB",
                "load s",
                "noise",
                "why",
            ],
            disable_numparse=True,
        )
    )
    compared = _versus_rows(doc)
    if compared:
        click.echo(
            "\ntuned / llama.cpp's defaults (Llama(path, n_ctx=4096) otherwise given nothing: "
            + _describe(tune.llama_cpp_defaults())
            + "), same GGUF, medians:"
        )
        click.echo(
            tabulate(
                compared,
                headers=[
                    "model",
                    "workload",
                    "defaults' tok/s",
                    "tuned tok/s",
                    "speed",
                    "peak RSS",
                    "peak anon",
                    "load time",
                ],
                disable_numparse=True,
            )
        )
        click.echo(
            "a ratio is shown only where the repetitions separate (the worst of one beats the best of the "
            "other, 3 or more a side); noise: " + measure.NOISE_RULE
        )
    click.echo(f"profile: {path}", err=True)


def _describe(settings: dict) -> str:
    return (
        f"repack {'on' if settings['repack'] else 'off'}, mmap {'on' if settings['use_mmap'] else 'off'}, "
        f"threads {settings['n_threads']}, threads_batch {settings['n_threads_batch']}"
    )


def _versus_rows(doc: dict) -> list[list[str]]:
    from qrun.bench import tune

    rows = []
    for model, entry in doc["models"].items():
        for workload in tune.WORKLOADS:
            evidence = (entry.get(workload) or {}).get("evidence") or {}
            vs = evidence.get("vs_llama_cpp_defaults")
            if not vs:
                continue
            metric = evidence["metric"]
            if vs["status"] != "ok":
                rows.append([model, workload, vs["status"], f"{evidence[metric]['median']:.2f}", "", "", "", ""])
                continue
            rows.append(
                [
                    model,
                    workload,
                    f"{vs['baseline'][metric]:.2f}",
                    f"{evidence[metric]['median']:.2f}",
                    *(_claim(vs, k) for k in (metric, "peak_rss_bytes", "peak_anon_bytes", "load_s")),
                ]
            )
    return rows


def _claim(vs: dict, metric: str) -> str:
    """ "1.25x" where the repetitions separate, else why there is no ratio ("not measured enough", ...)."""
    sep = (vs.get("separation") or {}).get(metric)
    if sep is None:  # a profile written before separations were recorded: its ratios were not checked
        return "not measured enough"
    return f"{sep['ratio']:.2f}x" if sep["ratio"] is not None else sep["verdict"]
