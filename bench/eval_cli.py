"""Command `qrun eval`: a thin layer over qrun.bench.eval (register with `from qrun.bench.eval_cli import eval_cmd`)."""

from __future__ import annotations

import json
from pathlib import Path

import click
from tabulate import tabulate

from qrun.completion import complete_model
from qrun.options import ggufs_option, quant_filter_option


def _subjects(value: str | None) -> list[str] | None:
    if not value:
        return None
    return [s.strip() for s in value.split(",") if s.strip()] or None


@click.command("eval")
@click.argument("suite", metavar="SUITE")
@click.argument("models", nargs=-1, shell_complete=complete_model)
@click.option(
    "--data",
    default=None,
    metavar="DIR",
    type=click.Path(file_okay=False),
    show_default="download it with --source",
    help="A local folder in the suite's CSV layout.",
)
@click.option(
    "--source",
    default="modelscope",
    show_default=True,
    type=click.Choice(["modelscope", "hf"]),
    help="The hub to download the suite from when --data is not given (QRUN_OFFLINE=1: its cache only).",
)
@click.option(
    "--split",
    default=None,
    show_default="val for C-Eval, test for CMMLU",
    help="C-Eval: dev or val (its test split has no answers); CMMLU: dev or test.",
)
@click.option("--subjects", default=None, metavar="A,B", help="Only these subjects (file names without _split.csv).")
@click.option(
    "--shots", default=0, show_default=True, type=int, help="Solved dev questions put first, as earlier turns."
)
@click.option("--limit", default=None, type=int, metavar="N", help="Only the first N questions of each subject.")
@quant_filter_option()
@ggufs_option(help="Folder of converted models.")
@click.option(
    "--out",
    "out_dir",
    default="eval-results",
    show_default=True,
    metavar="DIR",
    type=click.Path(file_okay=False),
    help="Results folder: eval.json and the per-question records (eval-records.jsonl, for resuming) go here.",
)
@click.option(
    "--threads",
    default=None,
    type=int,
    metavar="N",
    show_default="QRUN_THREADS, else tuning profile, else physical cores",
    help="CPU threads, one number.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Keep per question the prompt token ids, the four option log-probabilities, prediction and answer key in "
    "eval.json, and print it on stdout instead of the table.",
)
def eval_cmd(suite, models, data, source, split, subjects, shots, limit, quant, ggufs_dir, out_dir, threads, as_json):
    """Score multiple-choice accuracy (C-Eval, CMMLU) from the option letters' log-probabilities.

    \b
    qrun eval ceval --data ceval-exam/                  # every converted model, val split, zero-shot
    qrun eval cmmlu qwen --split test --shots 5 --quant Q4_K_M
    qrun eval ceval chatglm3 --subjects computer_network,law --limit 20 --json
    """
    from qrun.bench.eval import RESULTS_NAME, EvalConfig, run_eval

    config = EvalConfig(
        suite=suite,
        models=list(models),
        data=data,
        source=source,
        split=split,
        subjects=_subjects(subjects),
        shots=shots,
        limit=limit,
        quant=quant.upper() if quant else None,
        ggufs_dir=ggufs_dir,
        out_dir=out_dir,
        threads=threads,
        with_questions=as_json,
    )
    doc = run_eval(config)
    if as_json:
        click.echo(json.dumps(doc, ensure_ascii=False, indent=2))
    else:
        rows = [
            [
                r["model"],
                r["quant"],
                f"{r['accuracy']:.3f}" if r["accuracy"] is not None else "—",
                f"{r['ci95'][0]:.3f}–{r['ci95'][1]:.3f}" if r["ci95"] else "—",
                f"{r['n_correct']}/{r['n_questions']}",
            ]
            for r in doc["results"]
        ]
        click.echo(
            tabulate(rows, headers=["model", "quant", "accuracy", "95% CI (Wilson)", "correct"], disable_numparse=True)
        )
    click.echo(f"results: {Path(out_dir) / RESULTS_NAME}", err=True)
