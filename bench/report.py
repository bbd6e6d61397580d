"""Tables and report.md from bench results — one results document or several merged (e.g. two machines).

`qrun bench` writes them after every worker; `qrun report RESULTS.json...` regenerates or merges them from saved
results. Memory columns: "peak RSS" counts the mmap'd GGUF (file-backed page cache the kernel can drop);
"peak anon" is anonymous memory only — what the process really allocated.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from tabulate import tabulate

from qrun import measure
from qrun.bench import plots
from qrun.bench.results import METRICS, SUMMARY_METRICS
from qrun.errors import UsageError
from qrun.fsutil import write_json_atomic, write_text_atomic
from qrun.runner import machine as machine_mod

_MIB = 1024 * 1024
SHA_PREFIX_HEX = 12  # in tables; results.json and results.csv carry all 64 hex digits


def _mib(value) -> str:
    return "" if value is None else f"{value / _MIB:.1f}"


def _num(value, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _threads(run: dict) -> str:
    s = run.get("settings") or {}
    t, tb = s.get("n_threads"), s.get("n_threads_batch")
    return "" if t is None else (str(t) if tb in (None, t) else f"{t}/{tb}")


def _machine_labels(docs: list[dict]) -> list[str]:
    labels: list[str] = []
    seen: dict[str, int] = {}
    for doc in docs:
        base = machine_mod.label(doc.get("machine", {}))
        seen[base] = seen.get(base, 0) + 1
        labels.append(base if seen[base] == 1 else f"{base} #{seen[base]}")
    return labels


def _status(run: dict) -> str:
    if run["status"] == "ok":
        return "ok"
    done = run["summary"].get("questions_answered", 0)
    return f"{run['status'].upper()} ({done}/{run['summary'].get('questions_total', '?')} answered)"


def _accuracy(run: dict) -> str:
    acc = run["summary"].get("accuracy")
    if acc is None:
        return ""
    verdicts = sum(1 for q in run["questions"] if (q.get("score") or {}).get("source") == "verdict")
    return f"{acc:.2f}" + (f" ({verdicts} by verdict)" if verdicts else "")


NOISE_LEGEND = (
    "noise: " + measure.NOISE_RULE + ". A run is NOISY when any of its samples (loads and answers) is; "
    "NOISY k/n counts them. No sample is dropped."
)


def _load_cell(run: dict, with_spread: bool) -> str:
    cell = _num(run.get("load_s"))
    spr = run.get("load_spread") or {}
    if with_spread and cell and spr.get("n", 1) > 1:
        cell += f" ({spr['min']:.2f}–{spr['max']:.2f})"
    return cell


SUMMARY_HEADERS = [
    "model",
    "quant",
    "threads",
    "status",
    "noise",
    "size MiB",
    "load s",
    "peak RSS MiB",
    "peak anon MiB",
    "TTFT s",
    "prompt tok/s",
    "gen tok/s",
    "zh chars/s",
    "accuracy",
]


def summary_rows(docs: list[dict], *, with_spread: bool = False) -> tuple[list[str], list[list[str]]]:
    """The merged table: one row per run (a machine column when results come from more than one machine)."""
    labels = _machine_labels(docs)
    many = len(set(machine_mod.label(d.get("machine", {})) for d in docs)) > 1 or len(docs) > 1
    headers = (["machine"] if many else []) + SUMMARY_HEADERS
    rows = []
    for label, doc in zip(labels, docs):
        for run in doc.get("runs", []):
            s = run["summary"]
            speeds = []
            for metric, digits in zip(SUMMARY_METRICS, (3, 1, 1, 1)):
                cell = _num(s.get(metric), digits)
                rng = (s.get("range") or {}).get(metric)
                if with_spread and cell and rng:
                    cell += f" ({rng[0]:.{digits}f}–{rng[1]:.{digits}f})"
                speeds.append(cell)
            rows.append(
                ([label] if many else [])
                + [
                    run["model"],
                    run["quant"],
                    _threads(run),
                    _status(run),
                    measure.noise_mark(run.get("noise")),
                    _mib(run.get("gguf_size_bytes")),
                    _load_cell(run, with_spread),
                    _mib(run.get("peak_rss_bytes")),
                    _mib(run.get("peak_anon_bytes")),
                    *speeds,
                    _accuracy(run),
                ]
            )
    return headers, rows


def render_table(docs: list[dict], *, tablefmt: str = "simple") -> str:
    headers, rows = summary_rows(docs)
    return tabulate(rows, headers=headers, tablefmt=tablefmt, disable_numparse=True) + "\n" + NOISE_LEGEND


def _cell(text) -> str:
    return "" if text is None else str(text).replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def _md_table(rows: list[list], headers: list[str]) -> str:
    """A GitHub markdown table with every cell escaped ("|" in llama.cpp's system info, answers, hostnames...)."""
    return tabulate(
        [[_cell(v) for v in row] for row in rows],
        headers=[_cell(h) for h in headers],
        tablefmt="github",
        disable_numparse=True,
    )


def render_markdown(docs: list[dict], *, plots_drawn: list[dict] | None = None) -> str:
    """report.md; plots_drawn: what plots.write_plots() wrote into the same folder, embedded by file name."""
    labels = _machine_labels(docs)
    partial = [d for d in docs if d.get("partial")]
    out = ["# qrun bench report", ""]
    if partial:
        out += ["**PARTIAL RESULTS** — the run was interrupted (Ctrl-C); everything measured before that is below.", ""]
    headers, rows = summary_rows(docs, with_spread=True)
    out += [
        "## Summary",
        "",
        "Medians over questions of each question's median over repetitions; in brackets the range over every "
        "repetition. *load s*: median of one fresh load per repetition. Times in seconds, memory in MiB "
        "(1 MiB = 2^20 bytes). *peak RSS* includes the mmap'd GGUF "
        "(file-backed page cache); *peak anon* is anonymous memory only (repacked weights, KV cache, buffers). "
        "*zh chars/s*: Chinese characters of the answer per second of decoding. *accuracy*: mean rubric score "
        "0..1 (human verdicts where marked). The raw measurement of every repetition is in measurements.jsonl "
        "next to results.json, written line by line as it is taken: the record that survives a crash.",
        "",
        _md_table(rows, headers),
        "",
        f"*{NOISE_LEGEND}*",
        "",
    ]
    out += _plots_section(plots_drawn or [])
    failed = [(label, run) for label, doc in zip(labels, docs) for run in doc.get("runs", []) if run.get("failure")]
    if failed:
        out += ["## Failures", ""]
        for label, run in failed:
            f = run["failure"]
            last = f" Last stderr line: `{f['last_stderr']}`" if f.get("last_stderr") else ""
            out.append(f"- {run['run_id']} on {label}: {f.get('reason')}.{last}")
        out.append("")
    for label, doc in zip(labels, docs):
        out += _machine_section(label, doc)
    out += _questions_section(docs, labels)
    out += _unmatched_section(docs)
    return "\n".join(out) + "\n"


def _plots_section(drawn: list[dict]) -> list[str]:
    if not drawn:
        return []
    out = [
        "## Plots",
        "",
        "Drawn from the table above (runs that did not finish are left out); the speed is the median generation "
        "tok/s, and with several thread counts the accuracy plot shows each model and quant's fastest.",
        "",
    ]
    for plot in drawn:
        out += [f"![{plot['title']}]({Path(plot['file']).name})", ""]
    return out


def _sha_prefix(run: dict) -> str:
    digest = run.get("gguf_sha256")
    if not digest:
        return "(not hashed)"
    return digest[:SHA_PREFIX_HEX] + (" (not its manifest's)" if run.get("manifest_sha256_matches") is False else "")


def unmatched_verdicts(docs: list[dict]) -> list[dict]:
    """The verdicts that applied to no answer (qrun.bench.results.apply_verdicts), once each."""
    seen, out = set(), []
    for doc in docs:
        for v in doc.get("verdicts_unmatched") or []:
            key = json.dumps(v, sort_keys=True)
            if key not in seen:
                seen.add(key)
                out.append(v)
    return out


def unmatched_line(unmatched: list[dict], report_path) -> str:
    """One stderr line naming the verdicts that matched nothing."""
    lines = ", ".join(str(v["line"]) for v in unmatched)
    return (
        f"warning: {len(unmatched)} verdict(s) matched no answer (line(s) {lines}); why each did not is under "
        f'"Verdicts that matched nothing" in {report_path}'
    )


def _unmatched_section(docs: list[dict]) -> list[str]:
    unmatched = unmatched_verdicts(docs)
    if not unmatched:
        return []
    files = sorted({str(d["verdicts"]) for d in docs if d.get("verdicts")})
    rows = [
        [v["line"], v["model"], v["quant"], v["question_id"], v.get("answer_sha256") or "", v["score"], v["reason"]]
        for v in unmatched
    ]
    return [
        "## Verdicts that matched nothing",
        "",
        f"These lines of {', '.join(files) or 'the verdicts file'} applied to no answer; the rubric's score "
        "stands there.",
        "",
        _md_table(rows, ["line", "model", "quant", "question", "answer_sha256", "score", "why"]),
        "",
    ]


def _machine_section(label: str, doc: dict) -> list[str]:
    m, c = doc.get("machine", {}), doc.get("config", {})
    cores = f"{m.get('physical_cores')} physical / {m.get('logical_cores')} logical"
    rows = [
        ["CPU", m.get("cpu_model")],
        ["cores", cores],
        ["CPU flags", " ".join(map(str, m.get("cpu_flags") or []))],
        ["RAM", f"{(m.get('ram_bytes') or 0) / 2**30:.1f} GiB"],
        ["OS", m.get("os")],
        ["Python", m.get("python")],
        ["llama-cpp-python", m.get("llama_cpp_python")],
        ["llama.cpp system info", m.get("llama_cpp_system_info")],
        ["qrun", doc.get("qrun_version")],
        ["load average at start", " ".join(map(str, m.get("loadavg_at_start") or []))],
        ["started / finished (UTC)", f"{doc.get('created_utc')} / {doc.get('finished_utc') or 'not finished'}"],
        [
            "decoding",
            f"greedy (temperature {c.get('temperature')}), seed {c.get('seed')}, "
            f"max {c.get('max_tokens')} tokens, {c.get('warmup_tokens')}-token warm-up, "
            f"{c.get('repeat')} repetition(s)",
        ],
        ["suite", (doc.get("suite") or {}).get("name")],
    ]
    runs = [
        [
            r["run_id"],
            r.get("gguf"),
            _sha_prefix(r),
            _mib(r.get("gguf_size_bytes")),
            json.dumps(r.get("effective_settings") or r.get("settings") or {}, sort_keys=True),
        ]
        for r in doc.get("runs", [])
    ]
    return [
        f"## Machine: {label}",
        "",
        "```",
        doc.get("command") or "(command not recorded)",
        "```",
        "",
        _md_table(rows, ["", ""]),
        "",
        "Settings llama.cpp got, per run:",
        "",
        _md_table(runs, ["run", "GGUF", "sha256 (hashed from the file)", "size MiB", "settings"]),
        "",
    ]


def _questions_section(docs: list[dict], labels: list[str]) -> list[str]:
    out = ["## Answers", ""]
    seen_questions: dict[str, dict] = {}
    for doc in docs:
        for q in ((doc.get("suite") or {}).get("definition") or {}).get("questions", []):
            seen_questions.setdefault(q["id"], q)
    many = len(docs) > 1
    for qid, q in seen_questions.items():
        out += [f"### {qid}", "", f"> {q.get('question', '')}", ""]
        if q.get("reference"):
            out += [f"Expected: {q['reference']}", ""]
        rows = []
        for label, doc in zip(labels, docs):
            for run in doc.get("runs", []):
                answer = next((a for a in run["questions"] if a["question_id"] == qid), None)
                who = f"{run['model']} {run['quant']} t{_threads(run)}" + (f" @ {label}" if many else "")
                if answer is None:
                    rows.append([who, "", "", "", "", "(not answered)"])
                    continue
                sc = answer.get("score") or {}
                med, spr = answer["median"], answer["spread"].get("gen_tokens_per_s", {})
                speed = _num(med.get("gen_tokens_per_s"), 1)
                if spr.get("n", 1) > 1:
                    speed += f" ({spr['min']:.1f}–{spr['max']:.1f})"
                noisy = measure.count_noisy(answer.get("repetitions", []))["noisy"]
                if noisy:
                    speed += f" NOISY {noisy}/{len(answer['repetitions'])}"
                score_cell = _num(sc.get("score")) + (" (verdict)" if sc.get("source") == "verdict" else "")
                criteria = ", ".join(sc.get("matched", [])) + (
                    "; contradicted: " + ", ".join(sc["contradicted"]) if sc.get("contradicted") else ""
                )
                text = answer["answer"]
                if "max_tokens" in (answer.get("stop_reason") or ""):  # the limit, not the model, ended it
                    limit = (doc.get("config") or {}).get("max_tokens") or int(med.get("gen_tokens", 0))
                    text += f" (cut at {limit} tokens)"
                rows.append(
                    [
                        who,
                        score_cell,
                        criteria,
                        f"{int(med.get('gen_tokens', 0))} ({answer.get('stop_reason')})",
                        speed,
                        text,
                    ]
                )
        out += [_md_table(rows, ["run", "score", "criteria matched", "gen tokens (stop)", "gen tok/s", "answer"]), ""]
    return out


CSV_RUN_FIELDS = [
    "machine",
    "run_id",
    "model",
    "quant",
    "status",
    "settings",
    "gguf_size_bytes",
    "load_s",
    "peak_rss_bytes",
    "peak_anon_bytes",
    "gguf_sha256",
]
CSV_NOISE_FIELDS = ["load_s_min", "load_s_max", "load_samples", "run_noisy_samples", "run_samples", "noisy_repetitions"]


def render_csv(docs: list[dict]) -> str:
    """One row per (machine, run, question): medians of every metric, the score and its source."""
    buf = io.StringIO()
    fields = (
        CSV_RUN_FIELDS
        + CSV_NOISE_FIELDS
        + ["question_id", "answer_sha256", "score", "score_source", "stop_reason", "repetitions"]
        + [f"{m}_median" for m in METRICS]
        + [f"{m}_min" for m in METRICS]
        + [f"{m}_max" for m in METRICS]
    )
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for label, doc in zip(_machine_labels(docs), docs):
        for run in doc.get("runs", []):
            base = {k: run.get(k) for k in CSV_RUN_FIELDS if k in run}
            base.update(machine=label, settings=json.dumps(run.get("settings", {}), sort_keys=True))
            load_spread, noise = run.get("load_spread") or {}, run.get("noise") or {}
            base.update(
                load_s_min=load_spread.get("min"),
                load_s_max=load_spread.get("max"),
                load_samples=load_spread.get("n"),
                run_noisy_samples=noise.get("noisy"),
                run_samples=noise.get("samples"),
            )
            for q in run["questions"] or [{}]:
                row = dict(base)
                if q:
                    sc = q.get("score") or {}
                    row.update(
                        question_id=q["question_id"],
                        answer_sha256=q.get("answer_sha256"),
                        score=sc.get("score"),
                        score_source=sc.get("source"),
                        stop_reason=q.get("stop_reason"),
                        repetitions=len(q.get("repetitions", [])),
                        noisy_repetitions=measure.count_noisy(q.get("repetitions", []))["noisy"],
                    )
                    for m in METRICS:
                        if m in q.get("median", {}):
                            row[f"{m}_median"] = q["median"][m]
                            row[f"{m}_min"], row[f"{m}_max"] = q["spread"][m]["min"], q["spread"][m]["max"]
                writer.writerow(row)
    return buf.getvalue()


def check_report_folder(out_dir: str | Path) -> None:
    """`qrun report` never rewrites what `qrun bench` wrote: a folder holding results.json and its report.md or
    results.csv is refused (a bench folder whose two files are gone may get them back).

    Raises:
        UsageError: out_dir is such a folder.
    """
    out_dir = Path(out_dir)
    taken = [name for name in ("report.md", "results.csv") if (out_dir / name).exists()]
    if (out_dir / "results.json").exists() and taken:
        raise UsageError(
            f"{out_dir} holds the results of a `qrun bench` run; its {' and '.join(taken)} "
            f"{'are' if len(taken) > 1 else 'is'} kept as written",
            "give --out NEW_DIR for the new report",
        )


def write_outputs(
    docs: list[dict], out_dir: str | Path, *, results_json: bool, quality_rows: list[dict] | None = None
) -> dict[str, Path]:
    """Write report.md, results.csv and the PNG plots report.md embeds (and results.json for a single document)
    atomically into out_dir.

    Args:
        quality_rows: KL results (model, quant, kl_mean, kl_p99) for the KL-per-quant plot, if any.

    Returns:
        {"report", "csv", ("json"), and "plot:<file name>" per plot drawn: Path}.
    """
    out_dir = Path(out_dir)
    paths = {"report": out_dir / "report.md", "csv": out_dir / "results.csv"}
    if results_json:
        paths["json"] = out_dir / "results.json"
        write_json_atomic(paths["json"], {k: v for k, v in docs[0].items() if not k.startswith("_")})
    write_text_atomic(paths["csv"], render_csv(docs))
    drawn = plots.write_plots(docs, out_dir, quality_rows=quality_rows)
    paths.update({f"plot:{plot['file'].name}": plot["file"] for plot in drawn})
    write_text_atomic(paths["report"], render_markdown(docs, plots_drawn=drawn))
    return paths
