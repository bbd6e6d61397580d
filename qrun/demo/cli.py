"""`qrun demo`: the whole pipeline offline in about a minute, on tiny random-weight models of the three architectures.

It makes small tokenizers of each kind itself (qrun/demo/tokenizers.py), writes tiny checkpoints in the real Hugging
Face layout, then runs exactly what a user runs on real models: convert (BF16 GGUF -> Q4_K_M), ask (one streamed
answer per model), bench (the seed suite, scored) and report. The answers are gibberish by design.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import click

from qrun import registry, settings
from qrun.completion import complete_model, complete_quant
from qrun.demo.checkpoints import DEMO_MODELS, build_demo_checkpoints
from qrun.errors import BenchError, UsageError
from qrun.fsutil import ensure_writable_dir

BANNER = "tiny random-weight models: the answers are gibberish by design; this checks the pipeline, not the models"
DEMO_QUANT = "Q4_K_M"
DEMO_QUESTION = "你好！请用一句话介绍你自己。"
DEFAULT_MAX_TOKENS = 16  # per answer, in ask and bench: enough to see streaming and measure speed, fast on 2 cores
NEXT_STEPS = (
    "Next, with the real models (a 12-15 GB download each, a 4.1-4.9 GB Q4_K_M GGUF; see README, Performance):",
    "  qrun convert chatglm3            # download from ModelScope, convert, quantize to Q4_K_M",
    "  qrun convert qwen --from DIR     # or convert a checkpoint folder you already have",
    '  qrun ask chatglm3 "你好"          # one streamed answer',
    "  qrun bench --threads 2           # speed, memory and scored answers for every converted model",
)


def default_out_dir() -> Path:
    """QRUN_HOME/demo (QRUN_HOME defaults to ~/.cache/qrun)."""
    return settings.qrun_home() / "demo"


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_demo(
    *,
    out_dir: str | Path | None = None,
    threads: int | None = None,
    progress: Callable[[str], None] | None = _stderr,
    models: tuple[str, ...] = DEMO_MODELS,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    quant: str = DEMO_QUANT,
    echo: Callable[[str], None] | None = None,
) -> dict:
    """Build, convert, ask, bench and report the tiny demo models; everything lands under out_dir.

    Args:
        out_dir: working folder (checkpoints/, ggufs/, bench/); None = default_out_dir(). Reruns reuse what is
            already built there.
        threads: llama.cpp threads; None or 0 = physical cores.
        progress: receives step progress lines (default: stderr); None = silent.
        models: which of the three to run (canonical names or aliases).
        max_tokens: tokens per answer, in ask and in bench.
        quant: the type to quantize to (any of settings.QUANTS; the demo's point is the default Q4_K_M).
        echo: receives the demo's own output (banner, streamed answers, table) in pieces; None = stdout.

    Returns:
        {"out_dir", "checkpoints": {model: dir}, "ggufs": {model: path}, "answers": {model: ask() result},
         "results_json", "report_md", "plots": PNG paths, "bench": bench summary, "steps_s": {step: seconds},
         "elapsed_s"}.

    Raises:
        UsageError for bad arguments; any QrunError of the steps it runs.
    """
    started = time.perf_counter()
    out = (Path(out_dir).expanduser() if out_dir else default_out_dir()).absolute()
    names = tuple(registry.get(m).name for m in models)
    if not names:
        raise UsageError("no model to run", f"pass --model one or more of: {', '.join(DEMO_MODELS)}")
    if max_tokens < 1:
        raise UsageError(f"--max-tokens must be at least 1, got {max_tokens}")
    quant = settings.check_quant(quant)
    if threads is not None and threads < 0:
        raise UsageError(f"--threads must be at least 1 (0 = physical cores), got {threads}")
    threads = threads or settings.default_threads()
    # before anything is built: an unwritable folder is one line, not a traceback halfway through
    ensure_writable_dir(
        out,
        what="the demo folder",
        hint="pass --out DIR, or set QRUN_HOME to a writable folder" if not out_dir else "pass --out a writable folder",
    )
    write = echo or _stdout
    say = progress or (lambda _msg: None)
    steps_s: dict[str, float] = {}

    def step(name: str):
        return _Timer(steps_s, name)

    write(f"qrun demo: {BANNER}.\n")
    write(f"Working folder: {out}   threads: {threads}\n\n")

    with step("checkpoints"):
        checkpoints = build_demo_checkpoints(out / "checkpoints", models=names, progress=say)

    from qrun.convert.pipeline import convert_model

    ggufs = {}
    with step("convert"):
        for name in names:
            manifest = convert_model(
                name, from_dir=checkpoints[name], quant=quant, out_dir=out / "ggufs", threads=threads
            )
            ggufs[name] = Path(manifest["path"])

    from qrun.runner.ask import ask

    answers = {}
    with step("ask"):
        for name in names:
            size_mb = ggufs[name].stat().st_size / 1e6
            write(f"── {name} ({quant}, {size_mb:.1f} MB) ──\n")
            write(f"Q: {DEMO_QUESTION}\nA: ")
            result = ask(
                ggufs[name],
                DEMO_QUESTION,
                max_tokens=max_tokens,
                temperature=0.0,
                threads=threads,
                with_sha256=False,
                on_text=write,
                notice=say,
            )
            stats = result["stats"]
            speed = stats.get("gen_tokens_per_s")
            speed_text = f"{speed:.0f} tokens/s" if speed else "no decode timing"
            write(
                f"\n   [{stats['gen_tokens']} tokens, {speed_text}, stop: {stats['stop_reason']}, "
                f"load {stats['load_s']:.2f} s]\n\n"
            )
            answers[name] = result

    with step("bench"):
        bench = _run_bench(
            names,
            quant=quant,
            ggufs_dir=out / "ggufs",
            out_dir=out / "bench",
            threads=threads,
            max_tokens=max_tokens,
            progress=say,
        )
    write(bench["table"].rstrip("\n") + "\n\n")

    elapsed_s = time.perf_counter() - started
    write(f"Results: {bench['results_json']}\nReport:  {bench['report_md']}\n")
    if bench["plots"]:
        write(f"Plots:   {', '.join(str(path) for path in bench['plots'])} (embedded in the report)\n")
    failed = [run for run in bench["doc"]["runs"] if run["status"] != "ok"]
    if failed:
        reasons = "; ".join(
            f"{run['model']}: {(run.get('failure') or {}).get('reason', run['status'])}" for run in failed
        )
        raise BenchError(f"the demo bench failed ({reasons})", f"see {bench['report_md']} and the worker output above")
    write("Steps: " + ", ".join(f"{k} {v:.1f} s" for k, v in steps_s.items()) + f"; total {elapsed_s:.1f} s\n\n")
    write(f"Reminder: {BANNER}.\n")
    write(f"The tiny models stay in {out / 'ggufs'}: try  qrun chat deepseek --ggufs {out / 'ggufs'}\n\n")
    write("\n".join(NEXT_STEPS) + "\n")
    return {
        "out_dir": str(out),
        "checkpoints": {k: str(v) for k, v in checkpoints.items()},
        "ggufs": {k: str(v) for k, v in ggufs.items()},
        "answers": answers,
        "results_json": str(bench["results_json"]),
        "report_md": str(bench["report_md"]),
        "plots": [str(path) for path in bench["plots"]],
        "bench": bench,
        "steps_s": steps_s,
        "elapsed_s": elapsed_s,
    }


def _run_bench(names, *, quant: str, ggufs_dir: Path, out_dir: Path, threads: int, max_tokens: int, progress) -> dict:
    """The seed suite over the demo GGUFs through qrun.bench (one worker process per model, as `qrun bench`)."""
    from qrun.bench import plots, report
    from qrun.bench.run import BenchConfig, run_bench

    # one thread and `threads`: the report then has its speed-against-threads plot beside the accuracy bubbles
    sweep = sorted({1, threads})
    config = BenchConfig(
        models=list(names),
        quant=quant,
        suite=settings.DEFAULT_SUITE,
        threads=sweep,
        max_tokens=max_tokens,
        ggufs_dir=str(ggufs_dir),
        out_dir=str(out_dir),
        command=f"qrun demo (bench: qrun bench {' '.join(names)} --quant {quant} "
        f"--threads {','.join(map(str, sweep))} --max-tokens {max_tokens} --ggufs {ggufs_dir} "
        f"--out {out_dir})",
    )
    doc = run_bench(config, progress=progress, force=True)  # a demo rerun replaces its own bench/ results
    return {
        "doc": doc,
        "table": report.render_table([doc]),
        "results_json": out_dir / "results.json",
        "report_md": out_dir / "report.md",
        "plots": [out_dir / name for name in plots.PLOT_NAMES if (out_dir / name).is_file()],
    }


class _Timer:
    def __init__(self, into: dict, name: str):
        self.into, self.name = into, name

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.into[self.name] = time.perf_counter() - self.start


def _stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


@click.command("demo")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="DIR",
    show_default="$QRUN_HOME/demo, i.e. ~/.cache/qrun/demo",
    help="Work folder: checkpoints/, ggufs/ and bench/ go here.",
)
@click.option(
    "--threads",
    type=int,
    default=None,
    metavar="N",
    show_default="physical cores",
    help="llama.cpp threads, one number; 0 = physical cores.",
)
@click.option(
    "--model",
    "models",
    multiple=True,
    metavar="MODEL",
    shell_complete=complete_model,
    show_default="all three",
    help="Run only this model (repeatable).",
)
@click.option(
    "--max-tokens", type=int, default=DEFAULT_MAX_TOKENS, show_default=True, help="Tokens per answer, in ask and bench."
)
@click.option(
    "--quant",
    default=DEMO_QUANT,
    show_default=True,
    metavar="QUANT",
    shell_complete=complete_quant,
    help="Quantization type of the demo GGUFs.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON document on stdout (shape in README, JSON output); the demo's own output goes to stderr.",
)
def demo_cmd(out_dir, threads, models, max_tokens, quant, as_json):
    """Run convert -> ask -> bench -> report offline on tiny random-weight models.

    The three architectures, with small tokenizers qrun makes itself: checks that everything works on this
    machine in about a minute. The answers are gibberish by design.

    \b
    qrun demo
    qrun demo --out /tmp/qrun-demo --threads 2
    qrun demo --model deepseek --json > demo.json   # answers, bench results, timings as one JSON document
    """
    result = run_demo(
        out_dir=out_dir,
        threads=threads,
        models=tuple(models) or DEMO_MODELS,
        max_tokens=max_tokens,
        quant=quant,
        echo=lambda text: click.echo(text, nl=False, err=as_json),
    )
    if as_json:
        click.echo(json.dumps(json_document(result), ensure_ascii=False, indent=2))


def json_document(result: dict) -> dict:
    """What `qrun demo --json` prints: run_demo()'s result with the bench's results document in place of its
    rendered table (the same document as bench/results.json)."""
    bench_doc = {k: v for k, v in result["bench"]["doc"].items() if not k.startswith("_")}
    return {"schema": "qrun-demo", "schema_version": 1, **result, "bench": bench_doc}
