"""Command `qrun quality`: a thin layer over qrun.bench.quality (register with
`from qrun.bench.quality_cli import quality_cmd`)."""

from __future__ import annotations

import json
import sys

import click
from tabulate import tabulate

from qrun.bench import quality as quality_lib
from qrun.completion import complete_model, complete_quant
from qrun.options import ggufs_option


def _say(message: str) -> None:
    click.echo(message, err=True)


@click.command("quality")
@click.argument("model", shell_complete=complete_model)
@click.option(
    "--quants",
    default=None,
    metavar="Q[,Q...]",
    shell_complete=complete_quant,
    show_default="every converted type but the reference",
    help="GGUF types to score, a list such as Q4_0,Q4_K_M.",
)
@click.option(
    "--ref",
    default=None,
    metavar="QUANT",
    shell_complete=complete_quant,
    show_default="BF16 when converted, else F16",
    help="The reference GGUF type: BF16 or F16, the unquantized model (any converted type is taken, e.g. Q8_0 when "
    "no 16-bit GGUF is kept: the KL is then against that type).",
)
@click.option(
    "--text",
    "text_path",
    default=None,
    metavar="FILE",
    show_default="qrun's own Chinese text, bench/texts/zh_default.txt",
    help="UTF-8 text to score, tokenized as plain text (no chat format).",
)
@click.option(
    "--ctx",
    default=quality_lib.DEFAULT_CTX_TOKENS,
    show_default=True,
    type=int,
    metavar="N",
    help="Tokens per window; each window starts from an empty cache and only its second half is scored, so every "
    "scored token has ctx/2 tokens of context (as llama-perplexity does).",
)
@click.option(
    "--top-k",
    default=quality_lib.DEFAULT_TOP_K,
    show_default=True,
    type=int,
    metavar="K",
    help="Reference log-probabilities kept per token. The KL is computed over these k tokens plus one bucket for "
    "the rest: a lower bound of the full KL that tightens as k grows.",
)
@click.option(
    "--threads",
    default=None,
    type=int,
    metavar="N",
    show_default="QRUN_THREADS, then the physical core count",
    help="CPU threads, one number; 0 = as if not given.",
)
@click.option(
    "--threads-batch",
    default=None,
    type=int,
    metavar="N",
    show_default="--threads if given, else the same",
    help="Threads for evaluating the windows, one number.",
)
@ggufs_option()
@click.option(
    "--out",
    "out_dir",
    default=quality_lib.DEFAULT_OUT_DIR,
    show_default=True,
    metavar="DIR",
    type=click.Path(file_okay=False),
    help="Results folder: quality-MODEL.json goes here, one file per model (beside `qrun bench`'s results).",
)
@click.option(
    "--force", is_flag=True, help="Replace this model's quality-MODEL.json in --out when it holds another setup."
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the results document (as in quality-MODEL.json, with per-chunk KL, agreement and log-likelihoods).",
)
def quality_cmd(model, quants, ref, text_path, ctx, top_k, threads, threads_batch, ggufs_dir, out_dir, force, as_json):
    """Measure how far each quant moves MODEL's next-token distribution from BF16/F16 on a text.

    \b
    qrun quality qwen                          # every converted quant against BF16 (else F16)
    qrun quality chatglm3 --quants Q4_0,Q4_K_M --ref F16 --ctx 1024
    qrun quality deepseek --text my.txt --top-k 64 --json

    Per quant: mean, median and p99 KL(reference || quant) per scored token, the spread of per-window KL, top-1
    agreement and both perplexities. The reference runs once; its top-k log-probabilities are cached in qrun's
    home until the reference GGUF, the text, --ctx or --top-k change. Results go to --out/quality-MODEL.json, one
    file per model: a later run of other quants joins the file; one of another reference, text, --ctx or --top-k
    is refused unless --force.
    """
    doc = quality_lib.quality(
        model,
        quants=quality_lib.parse_quants(quants),
        ref=ref,
        text=text_path,
        ctx=ctx,
        top_k=top_k,
        ggufs_dir=ggufs_dir,
        out_dir=out_dir,
        threads=threads,
        threads_batch=threads_batch,
        force=force,
        say=_say,
    )
    if as_json:
        json.dump(doc, sys.stdout, ensure_ascii=False, indent=2)
        sys.stdout.write("\n")
        return
    click.echo(format_table(doc))


def _kl(value: float) -> str:
    return f"{value:.3g}"  # 3 significant digits: a Q8_0's KL is orders of magnitude below a Q4_0's


def format_table(doc: dict) -> str:
    ref, text = doc["reference"], doc["text"]
    head = (
        f"{doc['model']}: KL(ref || quant) against {ref['quant']}"
        f"{' (cached)' if ref.get('cached') else ''} on {text['name']} "
        f"({doc['scored_tokens']} scored of {text['tokens']} tokens, windows of {doc['ctx_tokens']}, "
        f"top-{doc['top_k']} + rest)\n"
        f"The reference's top {doc['top_k']} tokens hold {100 * ref['top_k_mass_mean']:.1f} % of its probability on "
        "average; the KL below is a lower bound of the full KL, a tight one only when that share is near 100 %."
    )
    rows = [
        [
            r["quant"],
            f"{r['size_bytes'] / 2**20:.1f}",
            _kl(r["kl_mean"]),
            _kl(r["kl_median"]),
            _kl(r["kl_p99"]),
            f"{_kl(r['kl_chunk_min'])}..{_kl(r['kl_chunk_max'])}",
            f"{100 * r['top1_agreement']:.1f}",
            f"{r['ppl']:.3f}",
            f"{r['ref_ppl']:.3f}",
        ]
        for r in doc["results"]
    ]
    headers = ["quant", "size MiB", "KL mean", "KL median", "KL p99", "KL per window", "top-1 %", "PPL", "ref PPL"]
    return f"{head}\n{tabulate(rows, headers=headers, disable_numparse=True)}\nresults: {doc['results_path']}"
