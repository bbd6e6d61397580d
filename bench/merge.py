"""One row per GGUF: bench results (speed, memory), `qrun quality` (KL vs the reference) and `qrun eval` (accuracy)
merged by the file's sha256, for `qrun report`.

A row is a plain dict with the keys model, quant, gguf_sha256, size_bytes, accuracy (the first eval suite's),
accuracies ({suite: {"accuracy", "ci95", "n_questions"}}), kl_mean, kl_p99, top1_agreement, ppl, reference_quant,
gen_tokens_per_s, prompt_tokens_per_s, peak_rss_bytes and puzzle_score (bench's rubric); a value no input holds
is None, shown as "—". A GGUF that bench ran more than once (several thread counts or machines) takes the figures
of its fastest finished run (highest generation tok/s), so the row shows what the file can do on the best setting
measured. Files without a sha256 (a bench run that could not hash its GGUF) are matched by model and quant.
"""

from __future__ import annotations

import json
from pathlib import Path

from tabulate import tabulate

from qrun.errors import BenchError
from qrun.fsutil import read_input_text

EVAL_KIND = "qrun-eval"
QUALITY_KIND = "qrun-quality"
_MIB = 1024 * 1024
DASH = "—"
SUITE_TITLES = {"ceval": "C-Eval", "cmmlu": "CMMLU"}


def kind_of(path: str | Path) -> tuple[str, dict | None]:
    """("eval" | "quality", the parsed document) of a results file given to `qrun report`; ("bench", None) for
    anything else, which qrun.bench.results.load then reads (or refuses) as bench results.

    Raises:
        BenchError: an eval.json or quality.json without the fields the report reads.
    """
    path = Path(path)
    try:
        doc = json.loads(read_input_text(path))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return "bench", None
    if isinstance(doc, dict) and doc.get("kind") in (EVAL_KIND, QUALITY_KIND):
        _check_results(doc, path)
        return ("eval" if doc["kind"] == EVAL_KIND else "quality"), doc
    return "bench", None


def _check_results(doc: dict, path: Path) -> None:
    """Raises BenchError naming the first field an eval.json / quality.json written by qrun would not have."""
    producer = "qrun eval" if doc["kind"] == EVAL_KIND else "qrun quality"
    version = doc.get("schema")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        # only a number above 1 is a newer qrun's file; a missing or odd schema is damage that no upgrade reads
        raise BenchError(f"{path} is damaged: field schema is {version!r}, not 1", f"re-run `{producer}`")
    if version > 1:
        raise BenchError(f"{path} has schema {version!r}; this qrun reads schema 1", "upgrade qrun")
    for key in ("suite", "split") if producer == "qrun eval" else ():
        if doc.get(key) is not None and not isinstance(doc[key], str):
            raise BenchError(f"{path} is damaged: field {key} is not a string", f"re-run `{producer}`")
    reference = doc.get("reference")
    if reference is not None and not (isinstance(reference, dict) and isinstance(reference.get("quant"), str | None)):
        raise BenchError(f"{path} is damaged: field reference has no quant name", f"re-run `{producer}`")
    results = doc.get("results")
    if not isinstance(results, list):
        raise BenchError(f"{path} is damaged: field results is not a list", f"re-run `{producer}`")
    for i, r in enumerate(results):
        if not isinstance(r, dict) or not isinstance(r.get("model"), str) or not isinstance(r.get("quant"), str):
            raise BenchError(f"{path} is damaged: results[{i}] has no model and quant", f"re-run `{producer}`")
        for key in ("gguf_sha256",):
            if r.get(key) is not None and not isinstance(r[key], str):
                raise BenchError(f"{path} is damaged: results[{i}].{key} is not a string", f"re-run `{producer}`")
        for key in ("accuracy", "kl_mean", "kl_p99", "top1_agreement", "ppl", "size_bytes"):
            value = r.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise BenchError(f"{path} is damaged: results[{i}].{key} is not a number", f"re-run `{producer}`")
        ci95 = r.get("ci95")
        if ci95 is not None and not (
            isinstance(ci95, list)
            and len(ci95) == 2
            and all(x is None or (isinstance(x, int | float) and not isinstance(x, bool)) for x in ci95)
        ):
            raise BenchError(f"{path} is damaged: results[{i}].ci95 is not two numbers", f"re-run `{producer}`")


_FIELDS = (
    "model",
    "quant",
    "gguf_sha256",
    "size_bytes",
    "accuracy",
    "accuracies",
    "kl_mean",
    "kl_p99",
    "top1_agreement",
    "ppl",
    "reference_quant",
    "gen_tokens_per_s",
    "prompt_tokens_per_s",
    "peak_rss_bytes",
    "puzzle_score",
)


def merged_rows(bench_docs: list[dict], quality_docs: list[dict], eval_docs: list[dict]) -> list[dict]:
    """One row per GGUF (sha256) seen in any input, in the order first seen (see the module docstring)."""
    rows: dict[tuple, dict] = {}

    def row_for(model: str, quant: str, sha: str | None) -> dict:
        key = ("sha", sha) if sha else ("name", model, quant)
        if key not in rows:
            rows[key] = {name: None for name in _FIELDS} | {"model": model, "quant": quant, "gguf_sha256": sha}
            rows[key]["accuracies"] = {}
        return rows[key]

    best_gen: dict[int, float] = {}
    for doc in bench_docs:
        for run in doc.get("runs", []):
            row = row_for(run["model"], run["quant"], run.get("gguf_sha256"))
            row["size_bytes"] = row["size_bytes"] or run.get("gguf_size_bytes")
            summary = run.get("summary") or {}
            gen = summary.get("gen_tokens_per_s")
            if run.get("status") != "ok" or gen is None or gen <= best_gen.get(id(row), -1.0):
                continue
            best_gen[id(row)] = gen
            row.update(
                gen_tokens_per_s=gen,
                prompt_tokens_per_s=summary.get("prompt_tokens_per_s"),
                peak_rss_bytes=run.get("peak_rss_bytes"),
                puzzle_score=summary.get("accuracy"),
            )
    for doc in quality_docs:
        reference = (doc.get("reference") or {}).get("quant")
        for r in doc["results"]:
            row = row_for(r["model"], r["quant"], r.get("gguf_sha256"))
            row["size_bytes"] = row["size_bytes"] or r.get("size_bytes")
            row.update({k: r.get(k) for k in ("kl_mean", "kl_p99", "top1_agreement", "ppl")}, reference_quant=reference)
    for doc in eval_docs:
        for r in doc["results"]:
            row = row_for(r["model"], r["quant"], r.get("gguf_sha256"))
            row["size_bytes"] = row["size_bytes"] or r.get("size_bytes")
            row["accuracies"][doc.get("suite") or "eval"] = {
                "accuracy": r.get("accuracy"),
                "ci95": r.get("ci95"),
                "n_questions": r.get("n_questions"),
                "split": doc.get("split"),
                "shots": doc.get("shots"),
            }
            if row["accuracy"] is None:
                row["accuracy"] = r.get("accuracy")
    return list(rows.values())


def _fmt(value, digits: int) -> str:
    return DASH if value is None else f"{value:.{digits}f}"


def table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Headers and cells: one accuracy column per eval suite, KL columns named after the reference."""
    suites = list(dict.fromkeys(s for row in rows for s in row["accuracies"]))
    references = sorted({row["reference_quant"] for row in rows if row["reference_quant"]})
    ref = "/".join(references) or "ref"
    headers = [
        "model",
        "quant",
        "size MiB",
        *[f"{SUITE_TITLES.get(s, s)} accuracy (95% CI)" for s in suites],
        f"KL vs {ref} mean",
        f"KL vs {ref} p99",
        "top-1 agree",
        "gen tok/s",
        "prompt tok/s",
        "peak RSS MiB",
        "sha256",
    ]
    cells = []
    for row in rows:
        accuracy_cells = []
        for suite in suites:
            entry = row["accuracies"].get(suite)
            if not entry or entry.get("accuracy") is None:
                accuracy_cells.append(DASH)
                continue
            ci = entry.get("ci95") or [None, None]
            accuracy_cells.append(
                f"{entry['accuracy']:.3f} ({_fmt(ci[0], 3)}–{_fmt(ci[1], 3)}, n={entry.get('n_questions')})"
            )
        cells.append(
            [
                row["model"],
                row["quant"],
                _fmt(row["size_bytes"] / _MIB if row["size_bytes"] else None, 1),
                *accuracy_cells,
                _fmt(row["kl_mean"], 4),
                _fmt(row["kl_p99"], 4),
                _fmt(row["top1_agreement"], 3),
                _fmt(row["gen_tokens_per_s"], 1),
                _fmt(row["prompt_tokens_per_s"], 1),
                _fmt(row["peak_rss_bytes"] / _MIB if row["peak_rss_bytes"] else None, 1),
                (row["gguf_sha256"] or "(not hashed)")[:12],
            ]
        )
    return headers, cells


def render_text(rows: list[dict]) -> str:
    headers, cells = table(rows)
    return tabulate(cells, headers=headers, tablefmt="simple", disable_numparse=True)


def markdown_section(rows: list[dict], sources: list[str]) -> str:
    """The "By GGUF" section of report.md."""
    headers, cells = table(rows)
    esc = [[c.replace("|", "\\|") for c in row] for row in cells]
    return "\n".join(
        [
            "## By GGUF: accuracy, quality and speed",
            "",
            "One row per GGUF file, matched by its sha256 across "
            + ", ".join(f"`{s}`" for s in sources)
            + ". *accuracy*: share of multiple-choice questions whose highest-probability option letter is the key "
            "(`qrun eval`), with a 95 % Wilson interval. *KL*: mean and 99th percentile per-token KL divergence "
            "from the reference GGUF on the same text (`qrun quality`). Speeds and peak RSS: the GGUF's fastest "
            "finished `qrun bench` run. — = not measured.",
            "",
            tabulate(esc, headers=headers, tablefmt="github", disable_numparse=True),
            "",
        ]
    )
