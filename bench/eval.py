"""`qrun eval`: multiple-choice accuracy (C-Eval, CMMLU) of converted models, scored from option log-probabilities.

Each question becomes one user message in the model's own chat format (Engine.prompt_ids, the default system prompt
as in `qrun ask`), worded as C-Eval's official zero-shot prompt:

    以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。

    {question}
    A. {A}
    B. {B}
    C. {C}
    D. {D}
    答案：

--shots K puts K dev questions of the same subject first as earlier turns of the conversation: each a user message
in the same wording, answered by an assistant message holding only the letter.

The answer token: the conversation is rendered four times with an assistant reply "A", "B", "C" or "D" (through the
same chat format), and the first token where the four renderings differ is each option's token; everything before
it is the context. That is the token the model would emit for that letter at that point, whatever its format
writes between the prompt and the reply: Qwen's reply starts right after "<|im_start|>assistant\\n" (token "A");
ChatGLM3 writes "\\n" after <|assistant|> first (SentencePiece: "▁", "<0x0A>"), so the context ends with it and
the letter is "▁A"; DeepSeek's "Assistant:" is followed by " A", whose leading space its byte-level BPE merges into
the letter's token "ĠA". tests/test_eval.py pins these for the three real vocabularies. The option
log-probabilities are a log-softmax over the whole vocabulary of the next-token logits after the context
(Engine.logits, last row); the prediction is the option with the highest one (the first of equal ones).

Accuracy is reported per subject and overall with a 95 % Wilson score interval. Per-question records are appended
to <out>/eval-records.jsonl as they are scored, so an interrupted run resumes where it stopped; <out>/eval.json is
rewritten atomically after every model (and on Ctrl-C).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qrun import __version__, lifeline, settings
from qrun.bench import exams
from qrun.bench.run import Target, find_targets
from qrun.errors import BenchError, UsageError
from qrun.fsutil import sha256_file, write_json_atomic
from qrun.runner import resolve
from qrun.runner.engine import Engine

KIND = "qrun-eval"
SCHEMA = 1
RESULTS_NAME = "eval.json"
RECORDS_NAME = "eval-records.jsonl"
LOCK_NAME = ".eval.lock"
# C-Eval's zero-shot prompt (hkust-nlp/ceval README, "Evaluation"): the instruction, the question, the four options
# and 答案：
INSTRUCTION = "以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。"
Z_95 = 1.959963984540054  # the standard normal's 97.5 % quantile


def question_text(question: exams.Question, subject_title: str) -> str:
    options = "\n".join(f"{letter}. {text}" for letter, text in zip(exams.LETTERS, question.options))
    return f"{INSTRUCTION.format(subject=subject_title)}\n\n{question.question}\n{options}\n答案："


def messages_for(question: exams.Question, shots: Sequence[exams.Question], subject_title: str) -> list[dict]:
    """The conversation: K solved dev questions as earlier turns, then the question."""
    messages: list[dict] = []
    for example in shots:
        messages.append({"role": "user", "content": question_text(example, subject_title)})
        messages.append({"role": "assistant", "content": example.answer or ""})
    messages.append({"role": "user", "content": question_text(question, subject_title)})
    return messages


def scoring_ids(engine: Engine, messages: list[dict]) -> tuple[list[int], list[int]]:
    """(context ids, the four option token ids): see the module docstring.

    Raises:
        BenchError: the model's tokenizer does not give the four letters four different first tokens.
    """
    # a trailing user turn closes the assistant's reply the way the format closes any earlier turn
    renders = [
        engine.prompt_ids([*messages, {"role": "assistant", "content": letter}, {"role": "user", "content": "."}])
        for letter in exams.LETTERS
    ]
    k = 0
    while all(k < len(r) for r in renders) and len({r[k] for r in renders}) == 1:
        k += 1
    option_ids = [r[k] if k < len(r) else -1 for r in renders]
    if -1 in option_ids or len(set(option_ids)) != len(option_ids):
        raise BenchError(
            f"{engine.path.name}: the letters A-D do not start with four different tokens in "
            f"{engine.spec.name}'s chat format",
            "this model cannot be scored by option letters",
        )
    return renders[0][:k], option_ids


def log_softmax(row: np.ndarray) -> np.ndarray:
    row = row.astype(np.float64)
    top = row.max()
    return row - (top + math.log(float(np.exp(row - top).sum())))


def score(engine: Engine, messages: list[dict]) -> dict:
    """Prompt ids, the four option log-probabilities and the prediction of one conversation."""
    return score_ids(engine, *scoring_ids(engine, messages))


def score_ids(engine: Engine, context: list[int], option_ids: list[int]) -> dict:
    """score() of a context and option tokens already found (scoring_ids)."""
    row = engine.logits(context, first_position=len(context) - 1)[0]
    logprobs = log_softmax(row)[option_ids]
    return {
        "prompt_ids": context,
        "option_token_ids": option_ids,
        "option_logprobs": [float(v) for v in logprobs],
        "prediction": exams.LETTERS[int(np.argmax(logprobs))],
    }


def wilson_interval(n_correct: int, n: int, z: float = Z_95) -> list[float]:
    """The Wilson score interval of a proportion (Wilson 1927; also in statsmodels' proportion_confint)."""
    if n == 0:
        return [0.0, 1.0]
    p = n_correct / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return [max(0.0, center - half), min(1.0, center + half)]


def summarize(records: list[dict]) -> dict:
    """accuracy, ci95, n_questions, n_correct and per-subject figures of scored question records."""
    n, k = len(records), sum(1 for r in records if r["prediction"] == r["answer"])
    subjects: dict[str, dict] = {}
    for name in sorted({r["subject"] for r in records}):
        mine = [r for r in records if r["subject"] == name]
        correct = sum(1 for r in mine if r["prediction"] == r["answer"])
        subjects[name] = {
            "accuracy": correct / len(mine),
            "ci95": wilson_interval(correct, len(mine)),
            "n_questions": len(mine),
            "n_correct": correct,
        }
    return {
        "accuracy": k / n if n else None,
        "ci95": wilson_interval(k, n) if n else None,
        "n_questions": n,
        "n_correct": k,
        "subjects": subjects,
    }


@dataclass
class EvalConfig:
    suite: str
    models: list[str] = field(default_factory=list)
    data: str | None = None  # None: download through the hub client of `source`
    source: str = "modelscope"
    split: str | None = None  # None: the suite's default (C-Eval val, CMMLU test)
    subjects: list[str] | None = None
    shots: int = 0
    limit: int | None = None  # first N questions of each subject
    quant: str | None = None
    ggufs_dir: str | None = None
    out_dir: str = "eval-results"
    threads: int | None = None
    with_questions: bool = False  # --json: per-question records in eval.json


def _record_key(record: dict) -> tuple:
    # messages_sha256: a question whose text, options, key or examples changed (another copy of the data in --data)
    # is scored again rather than taken from an earlier run
    return (
        record["gguf_sha256"],
        record["suite"],
        record["split"],
        record["shots"],
        record["subject"],
        record["id"],
        record.get("messages_sha256"),
    )


def messages_sha256(messages: list[dict], answer: str | None) -> str:
    text = json.dumps([messages, answer], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_records(path: Path) -> list[dict]:
    """The records of earlier runs; a line cut off by a kill (the last one) is skipped and re-scored."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and "gguf_sha256" in record and "prediction" in record:
                out.append(record)
    return out


def _append(stream, record: dict) -> None:
    stream.write(json.dumps(record, ensure_ascii=False) + "\n")
    stream.flush()
    os.fsync(stream.fileno())


def run_eval(config: EvalConfig, *, progress: Callable[[str], None] | None = None) -> dict:
    """Score every question of the chosen subjects with every target GGUF; write <out>/eval.json.

    Returns:
        The eval.json document.
    Raises:
        UsageError, ExamError, DownloadError, BenchError before any model runs; KeyboardInterrupt after writing
        eval.json with what was scored (the records stay for the next run to resume from).
    """
    progress = progress or (lambda text: print(text, file=sys.stderr, flush=True))
    suite = exams.get_suite(config.suite)
    split = config.split or suite.default_split
    config = dataclasses.replace(config, split=split)
    if config.shots < 0:
        raise UsageError(f"--shots must be 0 or more, got {config.shots}")
    if config.limit is not None and config.limit < 1:
        raise UsageError(f"--limit must be at least 1, got {config.limit}")
    if split == "dev" and config.shots:
        raise UsageError("--shots takes its examples from the dev split", "score --split val (or test) with --shots")
    targets = find_targets(config.models, quant=config.quant, ggufs=settings.gguf_dir(config.ggufs_dir))
    data = Path(config.data) if config.data else exams.download(suite, source=config.source)
    questions = exams.load(suite, data, split=split, subjects=config.subjects)
    root = exams.find_root(suite, data)
    shots = {s: exams.dev_examples(suite, data, s, config.shots) for s in questions}
    if config.limit:
        questions = {s: qs[: config.limit] for s, qs in questions.items()}
    out_dir = Path(config.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} is a file, not a folder", "give --out a folder (new or existing)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(
            f"cannot create --out {out_dir}: {err.strerror or err}", "give --out a folder you can write to"
        ) from None
    results: list[dict] = []
    doc = {
        "kind": KIND,
        "schema": SCHEMA,
        "qrun_version": __version__,
        "suite": suite.name,
        "split": split,
        "shots": config.shots,
        "shots_as": "earlier user/assistant turns",
        "limit_per_subject": config.limit,
        "data": str(data),
        "prompt": INSTRUCTION + "\\n\\n{question}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\n答案：",
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "partial": False,
        "results": results,
    }
    with lifeline.owned_folder(out_dir, what="`qrun eval`", lock_name=LOCK_NAME):
        earlier = earlier_results(out_dir / RESULTS_NAME, suite=suite.name, split=split, shots=config.shots)

        def write() -> None:
            # results of GGUFs this run has not (yet) scored again stay as they were
            redone = {r["gguf_sha256"] for r in results}
            doc["results"] = [r for r in earlier if r.get("gguf_sha256") not in redone] + results
            write_json_atomic(out_dir / RESULTS_NAME, doc)

        records_path = out_dir / RECORDS_NAME
        done = {_record_key(r): r for r in read_records(records_path)}
        with open(records_path, "a", encoding="utf-8") as stream:
            if stream.tell() and not records_path.read_bytes().endswith(b"\n"):
                stream.write("\n")  # a line cut off by a kill: the next record starts on its own line
            try:
                for index, target in enumerate(targets, start=1):
                    result = _eval_target(
                        target,
                        config,
                        suite,
                        questions,
                        shots,
                        root,
                        done,
                        stream,
                        progress,
                        f"[{index}/{len(targets)}]",
                    )
                    results.append(result)
                    write()
            except KeyboardInterrupt:
                doc["partial"] = True
                write()
                progress(f"interrupted: {out_dir / RESULTS_NAME} holds the models finished; rerun to resume")
                raise
    return doc


def earlier_results(path: Path, *, suite: str, split: str, shots: int) -> list[dict]:
    """The results in an earlier eval.json of the same suite, split and shots (kept for GGUFs not run again).

    Raises:
        UsageError: the file holds something else (another suite, split or shots, or not an eval.json): it is
            never replaced by results it cannot be merged with.
    """
    if not path.exists():
        return []
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        doc = None
    if not isinstance(doc, dict) or doc.get("kind") != KIND or not isinstance(doc.get("results"), list):
        raise UsageError(f"{path} exists and is not a `qrun eval` results file", "give --out NEW_DIR")
    held = (doc.get("suite"), doc.get("split"), doc.get("shots"))
    if held != (suite, split, shots):
        raise UsageError(
            f"{path} holds {held[0]} {held[1]} {held[2]}-shot results, not {suite} {split} {shots}-shot",
            "give --out NEW_DIR for these",
        )
    results = doc["results"]
    if not all(isinstance(r, dict) and _result_shape_ok(r) for r in results):
        raise UsageError(
            f"{path} has a result that is not a `qrun eval` result (model, quant, gguf_sha256 and counts)",
            "give --out NEW_DIR, or move that file away",
        )
    return results


def _result_shape_ok(result: dict) -> bool:
    """Whether an earlier result has the fields this run's table and merge read (a hand-edited file may not)."""
    texts = all(isinstance(result.get(k), str) for k in ("model", "quant", "gguf_sha256"))
    counts = all(
        isinstance(result.get(k), int) and not isinstance(result.get(k), bool) for k in ("n_questions", "n_correct")
    )
    accuracy, ci95 = result.get("accuracy"), result.get("ci95")
    ci_ok = ci95 is None or (
        isinstance(ci95, list) and len(ci95) == 2 and all(isinstance(x, int | float) for x in ci95)
    )
    return texts and counts and (accuracy is None or isinstance(accuracy, int | float)) and ci_ok


def _eval_target(target: Target, config, suite, questions, shots, root, done, stream, progress, tag) -> dict:
    sha = sha256_file(target.gguf)
    total = sum(len(qs) for qs in questions.values())
    base = {"suite": suite.name, "split": config.split, "shots": config.shots, "gguf_sha256": sha}
    conversations = {
        (q.subject, q.id): messages_for(q, shots[q.subject], exams.subject_title(root, q.subject))
        for qs in questions.values()
        for q in qs
    }

    def key(q: exams.Question) -> tuple:
        digest = messages_sha256(conversations[q.subject, q.id], q.answer)
        return _record_key({**base, "subject": q.subject, "id": q.id, "messages_sha256": digest})

    todo = [q for qs in questions.values() for q in qs if key(q) not in done]
    progress(f"{tag} {target.model} {target.quant}: {total} questions ({total - len(todo)} already scored)")
    if todo:
        _gguf, load = resolve.resolve(target.gguf, threads=config.threads, workload="prompt", notice=progress)
        # the context is sized to the longest question (as bench sizes it to its longest prompt): 4096 tokens of f16
        # KV cache on a 7B model is ~2 GB that a zero-shot question does not use
        with Engine.load(target.gguf, load, vocab_only=True) as vocab:
            ids = {(q.subject, q.id): scoring_ids(vocab, conversations[q.subject, q.id]) for q in todo}
            longest, (subject, qid) = max((len(ctx), k) for k, (ctx, _options) in ids.items())
            if vocab.n_ctx_train and longest > vocab.n_ctx_train:
                where = next(q for q in todo if (q.subject, q.id) == (subject, qid))
                raise UsageError(
                    f"question {qid} of {subject} is {longest} tokens"
                    f"{' with its examples' if config.shots else ''}; {target.model} was trained "
                    f"on {vocab.n_ctx_train}",
                    "use fewer --shots"
                    if config.shots
                    else f"shorten it or remove it from {where.file} (line {where.line}), or skip it with --subjects",
                )
            load = resolve.size_ctx(load, work_tokens=longest, n_ctx_train=vocab.n_ctx_train)
        with Engine.load(target.gguf, load, notice=progress) as engine:
            t0 = time.perf_counter()
            for i, q in enumerate(todo, start=1):
                messages = conversations[q.subject, q.id]
                scored = score_ids(engine, *ids[q.subject, q.id])
                record = {**base, "model": target.model, "quant": target.quant, "subject": q.subject, "id": q.id}
                record["messages_sha256"] = messages_sha256(messages, q.answer)
                record.update(scored, answer=q.answer, correct=scored["prediction"] == q.answer)
                _append(stream, record)
                done[_record_key(record)] = record
                if i % 25 == 0 or i == len(todo):
                    rate = i / max(time.perf_counter() - t0, 1e-9)
                    progress(f"{tag} {target.model} {target.quant}: {i}/{len(todo)} scored ({rate:.1f} questions/s)")
    records = [done[key(q)] for qs in questions.values() for q in qs]
    result = {
        "model": target.model,
        "quant": target.quant,
        "gguf": str(target.gguf),
        "gguf_sha256": sha,
        "size_bytes": target.gguf.stat().st_size,
        **summarize(records),
    }
    if config.with_questions:
        keep = ("subject", "id", "prompt_ids", "option_token_ids", "option_logprobs", "prediction", "answer")
        result["questions"] = [{k: r[k] for k in keep} for r in records]
    return result
