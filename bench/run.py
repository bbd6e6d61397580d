"""`qrun bench`: one fresh worker process per (model, settings), results merged into results.json, .csv, report.md.

A worker that crashes, is killed or runs out of memory is recorded as a failure for that model (exit code or
signal, its last meaningful stderr line) and the others continue. Ctrl-C stops the current worker, writes
everything measured so far (the report says PARTIAL) and re-raises. The three output files are rewritten
atomically after every worker, so even a killed `qrun bench` leaves the results of the workers that finished;
the raw measurements stream to <out>/measurements.jsonl as they are taken (kept; the job files in <out>/.jobs
are removed at the end). `qrun bench` exits 1 when any run failed, after writing everything, and refuses to
replace an earlier <out>/results.json or a non-empty measurements.jsonl without --force.

A run owns its --out folder (a lock held by the process, qrun.lifeline.owned_folder): a second `qrun bench` into
it is refused while the first lives. Workers die with the `qrun bench` that started them (qrun.child), so a
SIGKILL of it leaves no process measuring; the next run into that folder removes the .jobs it left.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from qrun import child, lifeline, registry, settings
from qrun import progress as progress_mod
from qrun.bench import plots, report
from qrun.bench import results as results_mod
from qrun.bench import suite as suites
from qrun.bench.score import load_verdicts
from qrun.errors import BenchError, UsageError
from qrun.runner import machine, resolve

DEFAULT_OUT_DIR = Path("bench-results")  # under the current directory
# the answer limit `qrun ask` uses for every model (registry GenerationDefaults.max_tokens, from Qwen-7B-Chat's
# max_new_tokens 512): 256 cut seed-5's nine meanings at a different point for each tokenizer, so scores compared
# tokenizers, not answers
DEFAULT_MAX_TOKENS = 512
WARMUP_TOKENS = 16
STREAM_NAME = "measurements.jsonl"
JOBS_NAME = ".jobs"  # the workers' job files, removed when the run ends (or by the next run, if it was killed)
LOCK_NAME = ".bench.lock"  # held while a run writes into the folder (qrun.lifeline.owned_folder)
_STOP_GRACE_S = 10.0


@dataclass
class Target:
    model: str  # canonical model name (or the file stem of a GGUF given by path)
    quant: str
    gguf: Path


@dataclass
class BenchConfig:
    models: list[str] = field(default_factory=list)
    quant: str | None = None  # None: every converted quant
    suite: str = settings.DEFAULT_SUITE
    threads: list[int] = field(default_factory=list)  # empty: settings.default_threads()
    repeat: int = 1
    max_tokens: int = DEFAULT_MAX_TOKENS
    n_ctx: int | None = None
    ggufs_dir: str | None = None
    out_dir: str | None = None
    verdicts: str | None = None
    use_mmap: bool | None = None  # None: the tuning profile's, else mmap
    extra_settings: dict = field(default_factory=dict)  # more load flags (qrun.bench.run.load_settings)
    command: str = ""


def load_settings(
    *,
    threads_batch: int | None = None,
    repack: bool | None = None,
    flash_attn: bool | None = None,
    kv_type: str | None = None,
) -> dict:
    """Load-setting flags beyond threads/ctx/mmap that a bench run resolves for every worker (only those given)."""
    given = {
        "n_threads_batch": resolve.check_threads(threads_batch, flag="--threads-batch"),
        "repack": repack,
        "flash_attn": flash_attn,
        "kv_type": resolve.check_kv_type(kv_type),
    }
    return {k: v for k, v in given.items() if v is not None}


def parse_threads(value: str | None) -> list[int]:
    """ "1,2" -> [1, 2]; 0 = the physical core count (as in ask/chat/convert); None/"" -> [].

    Raises:
        UsageError: anything but whole numbers from 0 to settings.max_threads().
    """
    out = [n or settings.physical_cores() for n in settings.check_thread_list(value, flag="--threads")]
    return list(dict.fromkeys(out))  # "0,2" on a 2-core machine is one run, not the same run twice


_QUANT_RE = re.compile(r"^(?P<model>.+)-(?P<quant>" + "|".join(map(re.escape, settings.QUANTS)) + r")\.gguf$")


def _converted(ggufs: Path) -> list[Target]:
    from qrun.convert.pipeline import find_converted

    return [Target(spec.name, quant, Path(path)) for spec, quant, path, _manifest in find_converted(ggufs)]


def find_targets(models: list[str], *, quant: str | None, ggufs: Path) -> list[Target]:
    """The GGUFs to bench: named models (or .gguf paths), else every converted model; filtered by quant.

    Raises:
        BenchError: nothing converted (naming the `qrun convert` to run), or a named model not converted.
    """
    converted = [t for t in _converted(ggufs) if quant is None or t.quant == quant]
    quant_hint = f" --quant {quant}" if quant else ""
    if not models:
        if not converted:
            raise BenchError(
                f"no converted models{' in ' + quant if quant else ''} in {ggufs}",
                f"convert one first, e.g. `qrun convert chatglm3{quant_hint}`"
                f" (or point --ggufs / QRUN_GGUF_DIR at the folder holding them)",
            )
        return converted
    targets = []
    for name in models:
        if name.endswith(".gguf") and Path(name).is_file():
            path = Path(name)
            m = _QUANT_RE.match(path.name)
            targets.append(Target(m.group("model") if m else path.stem, m.group("quant") if m else "?", path))
            continue
        spec = registry.get(name)
        mine = [t for t in converted if t.model == spec.name]
        if not mine:
            raise BenchError(
                f"{spec.name} has no{quant_hint.replace(' --quant', '')} GGUF in {ggufs}",
                f"run `qrun convert {spec.aliases[0] if spec.aliases else spec.name}{quant_hint}`",
            )
        targets.extend(mine)
    return targets


def _meaningful_line(lines) -> str:
    """The line that says why a worker died: its own "Error:" line, a C++ abort message, else the last line."""
    lines = [line.strip() for line in lines if line.strip()]
    for line in reversed(lines):
        if (
            line.startswith("Error:")
            or "what():" in line
            or line.startswith("terminate called")
            or re.match(r"^\w*(Error|Exception)\b", line)
        ):
            return line
    return lines[-1] if lines else ""


def run_bench(
    config: BenchConfig, *, progress=None, force: bool = False, meter: progress_mod.Meter | None = None
) -> dict:
    """Run the benchmark and write <out>/results.json, results.csv and report.md.

    progress: receives the text lines (default: stderr, above the bar).
    force: replace an earlier <out>/results.json (without it, that is a UsageError before anything runs).
    meter: makes the bar of answers measured (runs x questions x repeat), fed from measurements.jsonl; default: a
        qrun.progress.Bar on stderr when progress is the default, else none (the caller owns the output).
    Returns:
        The results document (see qrun.bench.results for the schema).
    Raises:
        BenchError / UsageError / SuiteError before anything runs; KeyboardInterrupt after writing partial results.
    """
    meter = meter or (progress_mod.Bar if progress is None else progress_mod.NoBar)
    progress = progress or progress_mod.say
    if config.repeat < 1:
        raise UsageError(f"--repeat must be at least 1, got {config.repeat}")
    if config.max_tokens < 1:
        raise UsageError(f"--max-tokens must be at least 1, got {config.max_tokens}")
    suite = suites.load(config.suite)
    verdicts = load_verdicts(config.verdicts) if config.verdicts else None
    if verdicts is not None and verdicts.note():
        progress(verdicts.note())
    ggufs = settings.gguf_dir(config.ggufs_dir)
    targets = find_targets(config.models, quant=config.quant, ggufs=ggufs)
    threads = config.threads or [settings.default_threads()]
    cores = settings.physical_cores()
    for n in threads:
        if n > cores:
            progress(
                f"warning: --threads {n} is more than this machine's {cores} physical cores; llama.cpp slows "
                f"down sharply above the core count (its threads spin-wait for a core) — measuring it anyway"
            )
    out_dir = Path(config.out_dir) if config.out_dir else DEFAULT_OUT_DIR
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} is a file, not a folder", "give --out a folder (new or existing)")
    _refuse_earlier_results(out_dir, force=force)  # before anything is created

    doc = results_mod.new_document(
        command=config.command,
        machine=machine.fingerprint(),
        suite=suite,
        verdicts_path=config.verdicts,
        config={
            "max_tokens": config.max_tokens,
            "repeat": config.repeat,
            "warmup_tokens": WARMUP_TOKENS,
            "temperature": 0.0,
            "seed": settings.DEFAULT_SEED,
            "threads": threads,
            "quant": config.quant,
            "ggufs_dir": str(ggufs),
        },
    )
    # per target: flags, then QRUN_*, then the tuning profile's "chat" settings (bench answers are chat-shaped)
    plan = [(t, _load_settings(config, t, n, progress)) for t in targets for n in threads]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BenchError(
            f"cannot create --out {out_dir}: {err.strerror or err}", "give --out a folder you can write to"
        ) from None
    with lifeline.owned_folder(out_dir, what="`qrun bench`", lock_name=LOCK_NAME):
        _refuse_earlier_results(out_dir, force=force)  # again, now that no other run can be writing there
        _remove_leftovers(out_dir, progress)
        return _run_plan(plan, doc, config, suite, verdicts, out_dir, progress, meter)


def _refuse_earlier_results(out_dir: Path, *, force: bool) -> None:
    """UsageError when out_dir holds results (or raw measurements of a run that never finished) and not force."""
    if force:
        return
    if (out_dir / "results.json").exists():  # earlier results are worth more than a default path
        raise UsageError(
            f"{out_dir / 'results.json'} already holds earlier results",
            "give --out NEW_DIR, or --force to replace them",
        )
    stream = out_dir / STREAM_NAME
    if stream.is_file() and stream.stat().st_size > 0:  # e.g. a `qrun bench` killed during its first worker
        raise UsageError(
            f"{stream} holds the measurements of an earlier run", "give --out NEW_DIR, or --force to replace them"
        )


def _remove_leftovers(out_dir: Path, progress) -> None:
    """What a killed run left and no live run owns (the caller holds the folder's lock): job files, temp files."""
    jobs_dir = out_dir / JOBS_NAME
    if jobs_dir.exists():
        progress(f"note: removing {jobs_dir}, left by a `qrun bench` that did not finish")
        shutil.rmtree(jobs_dir, ignore_errors=True)
    # qrun.fsutil.atomic_open's temporary names
    for name in ("results.json", "results.csv", "report.md", *plots.PLOT_NAMES):
        for tmp in out_dir.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)


class _AnswerCount:
    """Answers measured so far: the "rep" lines workers have appended to measurements.jsonl (read as they come)."""

    def __init__(self, stream_path: Path):
        self.path, self.offset, self.count = stream_path, 0, 0
        self._lock = threading.Lock()  # read from the worker's stderr thread and the main thread

    def read(self) -> int:
        with self._lock, open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
            complete = data[: data.rfind(b"\n") + 1]  # a line still being written is read next time
            self.offset += len(complete)
            for line in complete.splitlines():
                try:
                    self.count += json.loads(line).get("event") == "rep"
                except ValueError:
                    continue  # a torn line of a killed worker: results.read_stream skips it too
            return self.count


def _run_plan(plan, doc, config: BenchConfig, suite, verdicts, out_dir: Path, progress, meter) -> dict:
    """Run every (target, settings) of plan in its own worker, writing results after each (see run_bench)."""
    stream_path = out_dir / STREAM_NAME
    stream_path.write_text("", encoding="utf-8")  # absent, empty, or replaced under --force (checked by the caller)
    per_run = len(suite.questions) * config.repeat
    answers = _AnswerCount(stream_path)
    bar = meter(len(plan) * per_run, "bench", unit="answers")

    def on_worker_line(line: str) -> None:
        progress(line)
        bar.advance_to(answers.read())

    jobs_dir = out_dir / JOBS_NAME
    jobs_dir.mkdir(exist_ok=True)
    failures: dict[str, dict] = {}
    run_ids: list[str] = []
    progress(
        f"qrun bench: {len(plan)} run(s) of suite {suite.name!r} ({len(suite.questions)} questions), "
        f"results in {out_dir}/"
    )
    worker = None
    try:
        for index, (target, load) in enumerate(plan, start=1):
            answered_before = answers.read()
            run_id = f"{target.model}/{target.quant}/t{load.n_threads}"
            run_ids.append(run_id)
            job = {
                "run_id": run_id,
                "model": target.model,
                "quant": target.quant,
                "gguf": str(target.gguf.resolve()),
                "settings": load.to_dict(),
                "settings_source": load.sources,
                "questions": [{"id": q.id, "text": q.text} for q in suite.questions],
                "max_tokens": config.max_tokens,
                "repeat": config.repeat,
                "warmup_tokens": WARMUP_TOKENS,
                "seed": settings.DEFAULT_SEED,
                "results_path": str(stream_path.resolve()),
            }
            job_path = jobs_dir / f"{index:03d}.json"
            job_path.write_text(json.dumps(job, ensure_ascii=False), encoding="utf-8")
            # a fresh process per run (qrun.child): its stderr is echoed (progress) and its tail kept (failure reason)
            worker = child.start("qrun.bench.worker", [str(job_path)], on_stderr_line=on_worker_line)
            progress(f"[{index}/{len(plan)}] {run_id}: worker pid {worker.pid}")
            code = worker.wait()
            answered = answers.read() - answered_before
            bar.advance_to(answers.count)
            if code != 0:
                failures[run_id] = _failure(code, worker.tail)
                progress(f"[{index}/{len(plan)}] {run_id}: FAILED ({failures[run_id]['reason']}); continuing")
                bar.set_total(bar.total - (per_run - answered))  # the answers it will never give
            worker = None
            _write(doc, stream_path, run_ids, failures, suite, verdicts, out_dir, partial=False, done=False)
    except KeyboardInterrupt:
        bar.close()
        if worker is not None:
            worker.stop(_STOP_GRACE_S)
            failures.setdefault(
                run_ids[-1],
                {"exit_code": worker.returncode, "signal": None, "reason": "interrupted (Ctrl-C)", "interrupted": True},
            )
        _write(doc, stream_path, run_ids, failures, suite, verdicts, out_dir, partial=True, done=True)
        progress(f"interrupted: partial results written to {out_dir}/")
        raise
    finally:  # job files only feed the workers; measurements.jsonl stays (the record that survives a crash)
        bar.close()
        shutil.rmtree(jobs_dir, ignore_errors=True)
    _write(doc, stream_path, run_ids, failures, suite, verdicts, out_dir, partial=False, done=True)
    if doc["verdicts_unmatched"]:
        progress(report.unmatched_line(doc["verdicts_unmatched"], out_dir / "report.md"))
    return doc


def _load_settings(config: BenchConfig, target: Target, n_threads: int, progress) -> settings.LoadSettings:
    """One run's load settings (qrun.runner.resolve: flag > QRUN_* > the profile's "chat" entry > default); the
    worker sizes the context to the suite unless --ctx was given."""
    extra = config.extra_settings
    _gguf, load = resolve.resolve(
        target.gguf,
        threads=n_threads if config.threads else None,
        threads_batch=extra.get("n_threads_batch"),
        repack=extra.get("repack"),
        use_mmap=config.use_mmap,
        ctx=config.n_ctx,
        flash_attn=extra.get("flash_attn"),
        kv_type=extra.get("kv_type"),
        notice=progress,
    )
    return load


def _failure(code: int, tail) -> dict:
    sig = -code if code < 0 else None
    last = _meaningful_line(tail)
    return {
        "exit_code": code,
        "signal": sig,
        "reason": f"worker {child.describe_exit(code)}",
        "last_stderr": last,
        "interrupted": code == 130,
    }


def _write(doc, stream_path, run_ids, failures, suite, verdicts, out_dir, *, partial, done) -> None:
    lines = results_mod.read_stream(stream_path)
    doc["runs"] = [
        results_mod.build_run(run_id, lines, failure=failures.get(run_id), suite=suite, verdicts=verdicts)
        for run_id in run_ids
    ]
    doc["verdicts_unmatched"] = results_mod.apply_verdicts(doc["runs"], verdicts)  # over every run at once
    doc["partial"] = partial
    doc["finished_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) if done else None
    report.write_outputs([doc], out_dir, results_json=True)
