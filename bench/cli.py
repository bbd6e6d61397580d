"""Commands `qrun bench`, `qrun report` and `qrun score`: thin layers over qrun.bench.run / report / score."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import click
from tabulate import tabulate

from qrun import settings
from qrun.completion import complete_model
from qrun.errors import UsageError
from qrun.options import ggufs_option, quant_filter_option


class _RecordsArgs(click.Command):
    """Keeps the command's own arguments, so results record the exact command line (also under CliRunner)."""

    def parse_args(self, ctx, args):
        ctx.meta["qrun_raw_args"] = list(args)
        return super().parse_args(ctx, args)


def _command_line() -> str:
    ctx = click.get_current_context()
    return " ".join(["qrun", ctx.info_name or "bench", *map(shlex.quote, ctx.meta.get("qrun_raw_args", []))])


@click.command("bench", cls=_RecordsArgs)
@click.argument("models", nargs=-1, shell_complete=complete_model)
@click.option(
    "--threads",
    "threads",
    default=None,
    metavar="N[,N...]",
    show_default="QRUN_THREADS, then the physical core count",
    help="Thread counts to sweep, a list such as 1,2; 0 = the physical core count.",
)
# metavar: Click >= 8.2 would list a case-insensitive Choice in lower case; the type names are upper case
@quant_filter_option()
@click.option(
    "--suite",
    default=settings.DEFAULT_SUITE,
    show_default=True,
    metavar="NAME|FILE",
    help="Built-in suite name or a suite JSON file.",
)
@click.option("--repeat", default=1, show_default=True, type=int, help="Measured repetitions per question.")
@click.option(
    "--max-tokens",
    default=512,
    show_default=True,
    type=int,
    help="Answer length limit in tokens (512 is the models' own max_new_tokens).",
)
@click.option(
    "--ctx",
    "n_ctx",
    default=None,
    type=int,
    metavar="N",
    show_default="the suite's longest prompt + --max-tokens, capped at training",
    help="Context tokens.",
)
@click.option(
    "--threads-batch",
    default=None,
    type=int,
    metavar="N",
    show_default="--threads if given, else tuning profile, else the same",
    help="Threads for prompt processing, one number.",
)
@click.option(
    "--repack/--no-repack",
    default=None,
    show_default="QRUN_REPACK, else tuning profile, else off",
    help="llama.cpp's CPU weight repacking.",
)
@click.option(
    "--mmap/--no-mmap",
    default=None,
    show_default="tuning profile, else on",
    help="Map the GGUF instead of reading it into memory.",
)
@click.option(
    "--flash-attn/--no-flash-attn", default=None, show_default="tuning profile, else off", help="Flash attention."
)
@click.option(
    "--kv-type",
    default=None,
    metavar="f16|q8_0",
    show_default="tuning profile, else f16",
    help="KV cache type; q8_0 needs --flash-attn.",
)
@ggufs_option()
@click.option(
    "--out",
    "out_dir",
    default="bench-results",
    show_default=True,
    metavar="DIR",
    type=click.Path(file_okay=False),
    help="Results folder: results.json, results.csv and report.md go here (relative to the current directory).",
)
@click.option("--force", is_flag=True, help="Replace earlier results in --out; without it they are never overwritten.")
@click.option(
    "--verdicts",
    default=None,
    metavar="CSV",
    help="Human verdicts (model,quant,question_id,answer_sha256,score) that override the rubric.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the results document (as in results.json) on stdout instead of the table.",
)
def bench_cmd(
    models,
    threads,
    quant,
    suite,
    repeat,
    max_tokens,
    n_ctx,
    threads_batch,
    repack,
    mmap,
    flash_attn,
    kv_type,
    ggufs_dir,
    out_dir,
    force,
    verdicts,
    as_json,
):
    """Measure speed, memory and answer quality of converted models, one fresh process each.

    \b
    qrun bench                          # every converted model, physical-core threads
    qrun bench chatglm3 qwen --threads 1,2 --repeat 3
    qrun bench --suite my-suite.json --out results/today
    """
    from qrun.bench import report
    from qrun.bench.run import BenchConfig, load_settings, parse_threads, run_bench

    config = BenchConfig(
        models=list(models),
        quant=quant.upper() if quant else None,
        suite=suite,
        threads=parse_threads(threads),
        repeat=repeat,
        max_tokens=max_tokens,
        n_ctx=n_ctx,
        ggufs_dir=ggufs_dir,
        out_dir=out_dir,
        verdicts=verdicts,
        command=_command_line(),
        use_mmap=mmap,
        extra_settings=load_settings(
            threads_batch=threads_batch, repack=repack, flash_attn=flash_attn, kv_type=kv_type
        ),
    )
    doc = run_bench(config, force=force)
    _echo_json(doc) if as_json else click.echo(report.render_table([doc]))
    click.echo(
        f"results: {Path(out_dir) / 'results.json'}, {Path(out_dir) / 'results.csv'}, {Path(out_dir) / 'report.md'}",
        err=True,
    )
    failed = [run["run_id"] for run in doc["runs"] if run["status"] != "ok"]
    if failed:  # everything is written; the exit code still tells scripts that a model did not get through
        click.echo(
            f"Error: {len(failed)} of {len(doc['runs'])} run(s) failed ({', '.join(failed)}) — details under "
            f'"Failures" in {Path(out_dir) / "report.md"}',
            err=True,
        )
        sys.exit(1)


@click.command("report")
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--out",
    "out_dir",
    default=None,
    metavar="DIR",
    type=click.Path(file_okay=False),
    show_default="next to a single RESULTS file if `qrun bench`'s own are gone, ./bench-report when merging several",
    help="Report folder: report.md and results.csv go here; required with --verdicts or --suite. "
    "A bench folder's report.md and results.csv are never replaced.",
)
@click.option("--verdicts", default=None, metavar="CSV", help="Human verdicts that override the rubric.")
@click.option("--suite", default=None, metavar="NAME|FILE", help="Re-score the saved answers with this suite.")
@click.option(
    "--verdicts-template",
    "template_path",
    default=None,
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="Only write a verdicts CSV with every answer's model, quant, question and hash filled in (the "
    "score left for you to fill in); FILE must not exist yet.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the results document on stdout instead of the table "
    '(several RESULTS: {"schema": "qrun-bench-report", "documents": [...]}).',
)
def report_cmd(results, out_dir, verdicts, suite, template_path, as_json):
    """Regenerate or merge reports from saved results (e.g. runs from two machines).

    \b
    qrun report bench-results/results.json
    qrun report laptop/results.json server/results.json --out compare
    qrun report bench-results/results.json --verdicts-template verdicts.csv
    """
    from qrun.bench import merge, report
    from qrun.bench import results as results_mod
    from qrun.bench import suite as suites
    from qrun.bench.results import write_verdicts_template
    from qrun.bench.score import load_verdicts

    # eval.json and quality.json join the bench results as one row per GGUF (qrun.bench.merge)
    kinds = [merge.kind_of(path) for path in results]
    docs = [results_mod.load(path) for path, (kind, _) in zip(results, kinds) if kind == "bench"]
    extra = {kind: [doc for k, doc in kinds if k == kind] for kind in ("quality", "eval")}
    by_gguf = merge.merged_rows(docs, extra["quality"], extra["eval"]) if extra["quality"] or extra["eval"] else []
    if template_path:
        path = write_verdicts_template(docs, template_path)
        click.echo(f"verdicts template: {path} (fill in the score column, then pass it to --verdicts)", err=True)
        if as_json:  # --json always prints one document: here, where the template went
            _echo_json({"verdicts_template": str(path)})
        return
    if out_dir is None:
        if verdicts or suite:  # a re-scored report is a new result: it never lands among the bench's own files
            raise UsageError(
                "--verdicts and --suite re-score the saved answers into a new report",
                "give --out DIR for it (the bench folder's report.md and results.csv are kept)",
            )
        out_dir = Path(results[0]).parent if len(results) == 1 else Path("bench-report")
        if out_dir.exists() and not out_dir.is_dir():  # the default name, taken by a file
            raise click.UsageError(f"{out_dir} is a file, not a folder; give --out DIR")
    report.check_report_folder(out_dir)
    unmatched = []
    if verdicts or suite:
        loaded_suite = suites.load(suite) if suite else None
        table = load_verdicts(verdicts) if verdicts else None
        if table is not None and table.note():
            click.echo(table.note(), err=True)
        unmatched = results_mod.rescore(docs, loaded_suite, table)
    paths = report.write_outputs(
        docs, out_dir, results_json=False, merged_rows=by_gguf, merged_sources=[Path(p).name for p in results]
    )
    if as_json:
        clean = [{k: v for k, v in doc.items() if not k.startswith("_")} for doc in docs]
        if len(clean) == 1 and not by_gguf:
            _echo_json(clean[0])
        else:
            combined = {"schema": "qrun-bench-report", "schema_version": 1, "documents": clean}
            _echo_json({**combined, "by_gguf": by_gguf} if by_gguf else combined)
    else:
        if docs:
            click.echo(report.render_table(docs))
        if by_gguf:
            click.echo(merge.render_text(by_gguf))
    click.echo(f"report: {', '.join(str(path) for key, path in paths.items() if key != 'json')}", err=True)
    if unmatched:
        click.echo(report.unmatched_line(unmatched, paths["report"]), err=True)


def _echo_json(data) -> None:
    """One JSON document on stdout (the human table and progress go to stderr): for scripts, `| jq`."""
    click.echo(json.dumps(data, ensure_ascii=False, indent=2))


@click.command("score")
@click.argument("answers", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--suite",
    default=settings.DEFAULT_SUITE,
    show_default=True,
    metavar="NAME|FILE",
    help="Built-in suite name or a suite JSON file.",
)
@click.option("--verdicts", default=None, metavar="CSV", help="Human verdicts that override the rubric.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list (input order) instead of a table.")
def score_cmd(answers, suite, verdicts, as_json):
    """Score answers collected anywhere (JSONL: question_id, answer, optional model).

    \b
    qrun score answers.jsonl
    qrun score answers.jsonl --json --verdicts human.csv
    """
    from qrun.bench import suite as suites
    from qrun.bench.score import load_verdicts, score_answers_file

    scored = score_answers_file(answers, suites.load(suite), verdicts=load_verdicts(verdicts) if verdicts else None)
    if as_json:
        click.echo(json.dumps(scored, ensure_ascii=False, indent=2))
        return
    rows = [
        [
            s["line"],
            s["model"] or "",
            s["question_id"],
            f"{s['score']:.2f}",
            s["source"],
            ", ".join(s["matched"]),
            ", ".join(s["contradicted"]),
        ]
        for s in scored
    ]
    click.echo(
        tabulate(
            rows,
            headers=["line", "model", "question", "score", "source", "matched", "contradicted"],
            tablefmt="simple",
            disable_numparse=True,
        )
    )
    if scored:
        click.echo(f"mean score: {sum(s['score'] for s in scored) / len(scored):.3f} over {len(scored)} answers")
