"""The results document of `qrun bench` (results.json) and how it is built from the workers' measurement lines.

Schema "qrun-bench-results" version 1::

    {"schema": "qrun-bench-results", "schema_version": 1, "qrun_version": "...", "created_utc": "...",
     "finished_utc": "..." | null, "partial": false, "command": "qrun bench ...",
     "machine": {...machine.fingerprint()...}, "config": {"max_tokens", "repeat", "warmup_tokens", "temperature",
     "seed", "threads", "quant", "ggufs_dir"}, "suite": {"name", "path", "definition"}, "verdicts": path | null,
     "verdicts_unmatched": [{verdict, "reason"}],
     "runs": [{"run_id", "model", "quant", "gguf", "gguf_size_bytes", "gguf_sha256" (hashed from the file, not a
               manifest), "gguf_sha256_s", "manifest_sha256_matches": true | false | null, "quant_in_file",
               "settings": {Engine.load kwargs as requested},
               "effective_settings": {the same with defaults resolved: n_ctx, threads, use_mmap, repack},
               "status": "ok" | "failed" | "interrupted", "failure": {...} | null,
               "load_s" (median over one fresh load per repetition), "load_spread": {"min", "max", "stdev", "n"},
               "load_samples": [every load line], "noisy": bool, "noise": {"samples", "noisy", "unknown", "rule"},
               "peak_rss_bytes", "peak_anon_bytes", "rss_before_load_bytes", "memory_note",
               "questions": [{"question_id", "answer", "answer_sha256" (qrun.bench.verdicts.answer_sha256),
                              "answers_identical", "score": {ScoreResult},
                              "median": {metric: value}, "spread": {metric: {"min", "max", "stdev"}},
                              "stop_reason", "repetitions": [every measured field of every repetition]}],
               "summary": {"ttft_s", "prompt_tokens_per_s", "gen_tokens_per_s", "zh_chars_per_s", "accuracy",
                           "questions_answered", "questions_total", "range": {metric: [min, max]}}}]}

Units are in the names (_s seconds, _bytes bytes, _per_s per second). Medians and spreads are over repetitions;
the summary takes the median over questions of the per-question medians. Every load and repetition carries the
noise fields of its window (qrun.measure.noise_fields); a run is noisy when any of its samples is; no sample is
dropped for being noisy.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from qrun import __version__, measure
from qrun.bench import verdicts as verdicts_mod
from qrun.bench.score import ScoreResult, apply_verdict, score
from qrun.bench.suite import Suite
from qrun.errors import BenchError, UsageError
from qrun.fsutil import read_input_text, write_text_atomic

SCHEMA = "qrun-bench-results"
SCHEMA_VERSION = 1
METRICS = (
    "prompt_tokens",
    "ttft_s",
    "prompt_tokens_per_s",
    "gen_tokens",
    "gen_tokens_per_s",
    "total_s",
    "zh_chars",
    "zh_chars_per_s",
    "loadavg_1m",
)
SUMMARY_METRICS = ("ttft_s", "prompt_tokens_per_s", "gen_tokens_per_s", "zh_chars_per_s")


def new_document(*, command: str, machine: dict, suite: Suite, verdicts_path: str | None, config: dict) -> dict:
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "qrun_version": __version__,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "finished_utc": None,
        "partial": False,
        "command": command,
        "machine": machine,
        "config": config,
        "suite": {"name": suite.name, "path": str(suite.path), "definition": suite.raw},
        "verdicts": verdicts_path,
        "verdicts_unmatched": [],
        "runs": [],
    }


def read_stream(path: Path) -> list[dict]:
    """Measurement lines; a torn last line (a worker killed mid-write) is skipped."""
    out: list[dict] = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def spread(values: list[float]) -> dict:
    return {
        "min": min(values),
        "max": max(values),
        "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def _question(qid: str, reps: list[dict], suite: Suite | None) -> dict:
    reps = sorted(reps, key=lambda r: r["rep"])
    median, spreads = {}, {}
    for metric in METRICS:
        values = [r[metric] for r in reps if isinstance(r.get(metric), (int, float))]
        if values:
            median[metric] = statistics.median(values)
            spreads[metric] = spread(values)
    answer = reps[0]["answer"]
    result = None
    if suite is not None:
        result = score(suite.question(qid), answer)
    stops = sorted({r["stop_reason"] for r in reps})
    return {
        "question_id": qid,
        "answer": answer,
        "answer_sha256": verdicts_mod.answer_sha256(answer),
        "answers_identical": all(r["answer"] == answer for r in reps),
        "score": result.to_dict() if result else None,
        "stop_reason": "/".join(stops),
        "median": median,
        "spread": spreads,
        "repetitions": [{k: v for k, v in r.items() if k not in ("run_id", "event")} for r in reps],
    }


def _median_of(questions: list[dict], metric: str):
    values = [q["median"][metric] for q in questions if metric in q["median"]]
    return statistics.median(values) if values else None


def summarize(run: dict) -> dict:
    questions = run["questions"]
    scores = [q["score"]["score"] for q in questions if q.get("score")]
    summary = {m: _median_of(questions, m) for m in SUMMARY_METRICS}
    summary["range"] = {}
    for m in SUMMARY_METRICS:
        values = [r[m] for q in questions for r in q["repetitions"] if isinstance(r.get(m), (int, float))]
        if values:
            summary["range"][m] = [min(values), max(values)]
    summary["accuracy"] = sum(scores) / len(scores) if scores else None
    summary["questions_answered"] = len(questions)
    return summary


def build_run(
    run_id: str, lines: list[dict], *, failure: dict | None, suite: Suite | None, verdicts: verdicts_mod.Verdicts | None
) -> dict:
    """One run's record from the measurement lines (whatever got measured before a crash counts)."""
    mine = [line for line in lines if line.get("run_id") == run_id]
    first = {}
    loads = [line for line in mine if line["event"] == "load"]
    for event in ("start", "identity", "load", "done"):
        first[event] = next((line for line in mine if line["event"] == event), {})
    start = first["start"]
    model, quant = start.get("model") or run_id.split("/")[0], start.get("quant") or run_id.split("/")[1]
    reps_by_q: dict[str, list[dict]] = {}
    for line in mine:
        if line["event"] == "rep":
            reps_by_q.setdefault(line["question_id"], []).append(line)
    order = [q.id for q in suite.questions] if suite else list(reps_by_q)
    questions = [_question(qid, reps_by_q[qid], suite) for qid in order if qid in reps_by_q]
    peaks = [line for line in mine if "peak_rss_bytes" in line]
    status = (
        "ok"
        if first["done"] and not failure
        else ("interrupted" if failure and failure.get("interrupted") else "failed")
    )
    if status == "ok" and len(questions) < len(order):
        status = "failed"
    run = {
        "run_id": run_id,
        "model": model,
        "quant": quant,
        "gguf": start.get("gguf"),
        "gguf_size_bytes": first["identity"].get("gguf_size_bytes", start.get("gguf_size_bytes")),
        # hashed from the file by the worker before loading it (qrun.bench.worker.file_identity)
        "gguf_sha256": first["identity"].get("gguf_sha256"),
        "gguf_sha256_s": first["identity"].get("gguf_sha256_s"),
        "manifest_sha256_matches": first["identity"].get("manifest_sha256_matches"),
        "quant_in_file": first["load"].get("quant_in_file"),
        "settings": start.get("settings", {}),
        "effective_settings": first["load"].get("effective_settings"),
        "settings_source": start.get("settings_source"),
        "status": status,
        "failure": failure,
        **load_figures(loads),
        "peak_rss_bytes": max((p["peak_rss_bytes"] for p in peaks), default=None),
        "peak_anon_bytes": max((p["peak_anon_bytes"] for p in peaks), default=None),
        "rss_before_load_bytes": start.get("rss_before_load_bytes"),
        "memory_note": first["done"].get("memory_note"),
        "questions": questions,
    }
    run["noise"] = noise_summary(loads + [r for q in questions for r in q["repetitions"]])
    run["noisy"] = run["noise"]["noisy"] > 0
    run["summary"] = summarize(run)
    run["summary"]["questions_total"] = len(order)
    apply_verdicts([run], verdicts)  # this run alone; qrun.bench.run applies them again over every run
    return run


# Kept from each "load" line in a run's load_samples (the settings and memory are the run's, already above).
_LOAD_SAMPLE_SKIP = ("run_id", "event", "effective_settings", "model_detected")


def load_figures(loads: list[dict]) -> dict:
    """load_s (median over the fresh loads, one per repetition), load_spread and every load sample."""
    values = [line["load_s"] for line in loads if isinstance(line.get("load_s"), (int, float))]
    return {
        "load_s": statistics.median(values) if values else None,
        "load_spread": spread(values) if values else None,
        "load_samples": [{k: v for k, v in line.items() if k not in _LOAD_SAMPLE_SKIP} for line in loads],
    }


def noise_summary(samples: list[dict]) -> dict:
    """How many of a run's samples (loads and answers) the noise rule marked noisy, or could not judge."""
    return {**measure.count_noisy(samples), "rule": measure.NOISE_RULE}


def rescore(docs: list[dict], suite: Suite | None, verdicts: verdicts_mod.Verdicts | None) -> list[dict]:
    """Re-score answers with a suite (if given) and apply verdicts over every run of `docs`, in place.

    Returns:
        The verdicts that applied to nothing, each with its reason (also stored as each doc's
        "verdicts_unmatched").
    """
    runs = [run for doc in docs for run in doc.get("runs", [])]
    for run in runs:
        for q in run["questions"]:
            if suite is not None:
                q["score"] = score(suite.question(q["question_id"]), q["answer"]).to_dict()
    unmatched = apply_verdicts(runs, verdicts)
    for doc in docs:
        doc["verdicts"] = verdicts.path if verdicts else None  # earlier verdicts were undone above
        doc["verdicts_unmatched"] = unmatched
    return unmatched


def apply_verdicts(runs: list[dict], verdicts: verdicts_mod.Verdicts | None) -> list[dict]:
    """Put human verdicts over the rubric scores of `runs`, in place, deciding over all their answers at once (a
    verdict without an answer hash applies only where the answers it covers are one text); earlier verdicts are
    undone first. Returns the verdicts that applied to nothing, each with its reason."""
    verdicts = verdicts or verdicts_mod.Verdicts()
    scored = [(run, q) for run in runs for q in run["questions"] if q.get("score")]
    answers = [verdicts_mod.Answer(run["model"], run["quant"], q["question_id"], q["answer"]) for run, q in scored]
    chosen, unmatched = verdicts.resolve(answers)
    for (_run, q), verdict in zip(scored, chosen):
        q["score"] = apply_verdict(ScoreResult.from_dict(q["score"]), verdict).to_dict()
    for run in runs:
        run["summary"].update(accuracy=summarize(run)["accuracy"])
    return unmatched


def write_verdicts_template(docs: list[dict], path: str | Path) -> Path:
    """Write a verdicts CSV (qrun.bench.verdicts) with one line per distinct answer in `docs`, score left empty.

    Raises:
        UsageError: `path` exists already (an earlier verdicts file is a person's work: never overwritten).
    """
    path = Path(path)
    if path.exists():
        raise UsageError(f"{path} already exists", "give --verdicts-template a new file name")
    rows = [
        {
            "model": run["model"],
            "quant": run["quant"],
            "question_id": q["question_id"],
            "answer": q["answer"],
            "rubric_score": ScoreResult.from_dict(q["score"]).rubric().score if q.get("score") else None,
        }
        for doc in docs
        for run in doc.get("runs", [])
        for q in run["questions"]
    ]
    write_text_atomic(path, verdicts_mod.template(rows))
    return path


# `qrun report` hands every file that is not an eval.json or quality.json to load(): a truncated eval.json lands
# here too, so the hint names all three
_WHAT_REPORT_READS = (
    "give a results.json, eval.json or quality-<model>.json written by `qrun bench`, `qrun eval` or `qrun quality`"
)


def load(path: str | Path) -> dict:
    """A saved results.json. Raises BenchError if it is not one (or from a newer qrun)."""
    path = Path(path)
    try:
        doc = json.loads(read_input_text(path))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BenchError(f"cannot read results file {path}: {err}", _WHAT_REPORT_READS) from None
    except RecursionError:  # "[[[[..." nested deeper than Python's parser goes
        raise BenchError(f"cannot read results file {path}: JSON nested too deeply", _WHAT_REPORT_READS) from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise BenchError(f"{path} is not a qrun bench results file", _WHAT_REPORT_READS)
    version = doc.get("schema_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise BenchError(
            f"{path} is damaged: field schema_version is {version!r}, not a whole number",
            "re-run `qrun bench` to write it again, or restore the file from a copy",
        )
    if version > SCHEMA_VERSION:
        raise BenchError(
            f"{path} has results schema {doc['schema_version']}; this qrun reads up to {SCHEMA_VERSION}", "upgrade qrun"
        )
    _check(doc, path)
    doc.setdefault("_path", str(path))
    return doc


# What the report and re-scoring read from a loaded document: a hand-edited or damaged file fails here, by field,
# instead of with a KeyError deep in qrun.bench.report. Types: a tuple allows each; None in it allows null/absent.
_NUM = (int, float)
_TYPE_NAMES = {list: "a list", dict: "an object", str: "a string", int: "a number", float: "a number"}
_DOC_FIELDS = {
    "runs": (list,),
    "machine": (dict,),
    "config": (dict,),
    "suite": (dict, None),
    "command": (str, None),
    "created_utc": (str, None),
    "finished_utc": (str, None),
    "verdicts_unmatched": (list, None),
}
_MACHINE_FIELDS = {"ram_bytes": (int, None), "cpu_flags": (list, None), "loadavg_at_start": (list, None)}
_SUMMARY_FIELDS = {**{m: (*_NUM, None) for m in SUMMARY_METRICS}, "accuracy": (*_NUM, None), "range": (dict, None)}
_RUN_FIELDS = {
    "run_id": (str,),
    "model": (str,),
    "quant": (str,),
    "status": (str,),
    "summary": (dict,),
    "questions": (list,),
    "settings": (dict, None),
    "effective_settings": (dict, None),
    "failure": (dict, None),
    "gguf": (str, None),
    "gguf_size_bytes": (int, None),
    "load_s": (*_NUM, None),
    "gguf_sha256": (str, None),
    "load_spread": (dict, None),
    "load_samples": (list, None),
    "noise": (dict, None),
    "peak_rss_bytes": (int, None),
    "peak_anon_bytes": (int, None),
}
_QUESTION_FIELDS = {
    "question_id": (str,),
    "answer": (str,),
    "median": (dict,),
    "spread": (dict,),
    "repetitions": (list,),
    "score": (dict, None),
    "stop_reason": (str, None),
}
_SCORE_FIELDS = {
    "question_id": (str,),
    "score": _NUM,
    "matched": (list,),
    "contradicted": (list,),
    "criteria": (list,),
    "source": (str, None),
}


def _check(doc: dict, path: Path) -> None:
    """Raises BenchError naming the file and the first field that a results.json written by qrun would not have."""

    def fail(field: str, problem: str):
        raise BenchError(
            f"{path} is damaged: field {field} {problem}",
            "re-run `qrun bench` to write it again, or restore the file from a copy",
        )

    def fields(obj: dict, spec: dict, where: str) -> None:
        for key, types in spec.items():
            value = obj.get(key)
            allowed = tuple(t for t in types if t is not None)
            if value is None and None in types:
                continue
            if key not in obj:
                fail(f"{where}{key}", "is missing")
            if isinstance(value, bool) or not isinstance(value, allowed):
                fail(f"{where}{key}", "is not " + " or ".join(dict.fromkeys(_TYPE_NAMES[t] for t in allowed)))

    fields(doc, _DOC_FIELDS, "")
    fields(doc["machine"], _MACHINE_FIELDS, "machine.")
    for i, verdict in enumerate(doc.get("verdicts_unmatched") or []):
        if (
            not isinstance(verdict, dict)
            or isinstance(verdict.get("line"), bool)
            or not isinstance(verdict.get("line"), int)
        ):
            fail(f"verdicts_unmatched[{i}]", "is not a verdict with its CSV line number")
    definition = (doc.get("suite") or {}).get("definition")
    if definition is not None and (
        not isinstance(definition, dict)
        or not isinstance(definition.get("questions", []), list)
        or not all(isinstance(q, dict) and isinstance(q.get("id"), str) for q in definition.get("questions", []))
    ):
        fail("suite.definition", 'is not a suite (an object whose "questions" each have an "id")')
    for r, run in enumerate(doc["runs"]):
        where = f"runs[{r}]."
        if not isinstance(run, dict):
            fail(f"runs[{r}]", "is not an object")
        fields(run, _RUN_FIELDS, where)
        fields(run["summary"], _SUMMARY_FIELDS, f"{where}summary.")
        for metric, bounds in (run["summary"].get("range") or {}).items():
            if not (isinstance(bounds, list) and len(bounds) == 2 and all(isinstance(v, _NUM) for v in bounds)):
                fail(f"{where}summary.range.{metric}", "is not [min, max]")
        for i, q in enumerate(run["questions"]):
            qwhere = f"{where}questions[{i}]"
            if not isinstance(q, dict):
                fail(qwhere, "is not an object")
            fields(q, _QUESTION_FIELDS, qwhere + ".")
            for metric, value in q["median"].items():
                if isinstance(value, bool) or not isinstance(value, _NUM):
                    fail(f"{qwhere}.median.{metric}", "is not a number")
            for metric in q["median"]:
                if metric not in q["spread"]:
                    fail(f"{qwhere}.spread.{metric}", "is missing (the median has it)")
            for metric, s in q["spread"].items():
                if not (
                    isinstance(s, dict)
                    and all(isinstance(s.get(k), _NUM) for k in ("min", "max"))
                    and isinstance(s.get("n", 1), int)
                ):
                    fail(f"{qwhere}.spread.{metric}", 'is not an object with numbers "min", "max" and "n"')
            if not all(isinstance(r, dict) for r in q["repetitions"]):
                fail(f"{qwhere}.repetitions", "is not a list of objects")
            if "score" not in q:
                fail(f"{qwhere}.score", "is missing")
            if q["score"] is not None:
                fields(q["score"], _SCORE_FIELDS, f"{qwhere}.score.")
                for c, criterion in enumerate(q["score"]["criteria"]):
                    if not (isinstance(criterion, dict) and isinstance(criterion.get("id"), str)):
                        fail(f"{qwhere}.score.criteria[{c}]", 'is not a criterion result with an "id"')
                try:
                    ScoreResult.from_dict(q["score"])
                except (TypeError, KeyError, ValueError) as err:
                    fail(f"{qwhere}.score.criteria", f"is not a list of criterion results ({err})")
