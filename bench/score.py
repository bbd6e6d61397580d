"""Score an answer against its question's rubric: 0..1, with the criteria matched and contradicted shown.

The five seed questions are read for the claims an answer makes (qrun.bench.readers; the reading rules are in
qrun.bench.claims): which way each season goes, who looks down on whom, who does not know, who likes whom, which
gloss goes with which 意思. Each criterion is then matched (weight counts), partial (hedged or "both": half),
contradicted (the opposite claim, a denial, or both sides without a correction; on seed-1..4 a wrong claim costs
its weight) or missing; score = credit / total weight, at least 0. Agreement with human labels:
`python -m qrun.bench.score_eval tests/data/scorer/labelled.jsonl`.

Any other question — another suite, or a seed question whose text or criterion ids were edited — is scored by
the patterns in its suite file, read like this (the same steps for every suite):

1. Normalize: Unicode NFKC (full-width ，：？ become , : ?), lower case, markdown emphasis and quotation marks
   removed (`**白白**喜欢“明明”` reads 白白喜欢明明), whitespace collapsed, spaces between two Chinese characters
   dropped. Plain-substring patterns are normalized the same way.
2. Drop the echo: every piece of the question text of 6 characters or more (split at punctuation and spaces) is
   cut out of the answer, so an answer that repeats the question ("他知道我知道你知道他不知道吗") gets no credit
   for words it copied.
3. Split into clauses at punctuation (, . ! ? ; : 。、 newline) and before a contrastive connective (而是, 而不是,
   而非, 但是, 可是, 然而, 不过, but, rather, instead), so "不是A而是B" is two clauses.
4. Every match of every pattern is found (overlapping ones too; of matches ending at the same place the tightest
   is kept). A match is
   - *not asserted* if the clause it ends in is a question (ends with "?"): a question asserts nothing;
   - *negated* if a negator (不是, 并非, 而非, 并不, 绝非, not, n't, rather than, instead of) appears in its clause
     before it — or, for a match spanning clauses, anywhere in the part of its last clause that it covers;
   - *asserted* otherwise.
   Evidence FOR a criterion: an asserted pattern. Evidence AGAINST: an asserted contradiction, or a negated
   pattern ("并不是白白喜欢明明" denies the criterion). A negated contradiction is no evidence either way
   ("不是明明喜欢白白" alone does not say who likes whom).
5. The last word counts: the evidence that ends latest in the answer decides, so "不是明明喜欢白白，而是白白喜欢明明"
   and a self-correction ("明明喜欢白白……不对，白白喜欢明明") are matched, while an answer that ends by asserting
   the opposite is contradicted. No evidence: missing.
6. score = sum of the weights of matched criteria / sum of all weights. Contradicted and missing criteria add 0.

A human verdict (qrun.bench.verdicts) replaces the score and is marked source="verdict"; the rubric's score is kept
in rubric_score.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from qrun.bench import claims, readers
from qrun.bench import verdicts as verdicts_mod
from qrun.bench.claims import normalize
from qrun.bench.suite import Criterion, Pattern, Question
from qrun.fsutil import read_input_text

ECHO_MIN_CHARS = 6
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK_RE = re.compile(f"[{_CJK}]|[\U00020000-\U0002ffff]")
_PUNCT_RE = re.compile(r"[,.!?;:。、\n]+")
_ECHO_SPLIT_RE = re.compile(r"[,.!?;:。、\s]+")
_CONNECTIVE_RE = re.compile(r"而是|而不是|而非|但是|可是|然而|不过|\bbut\b|\brather\b|\binstead\b")
_NEGATOR_RE = re.compile(r"不是|并非|而非|并不|绝非|\bnot\b|n't\b|rather than|instead of")


def chinese_chars(text: str) -> int:
    """Chinese characters (CJK ideographs) in a text; punctuation, digits and Latin letters do not count."""
    return len(_CJK_RE.findall(text))


def remove_echo(answer_norm: str, question_text: str) -> str:
    pieces = sorted(
        {p for p in _ECHO_SPLIT_RE.split(normalize(question_text)) if len(p) >= ECHO_MIN_CHARS}, key=len, reverse=True
    )
    for piece in pieces:
        answer_norm = answer_norm.replace(piece, " ")
    return answer_norm


@dataclass(frozen=True)
class _Clause:
    start: int
    end: int
    question: bool


def clauses(text: str) -> list[_Clause]:
    out: list[_Clause] = []
    start = 0
    segments = []
    for m in _PUNCT_RE.finditer(text):
        segments.append((start, m.end(), "?" in m.group()))
        start = m.end()
    if start < len(text):
        segments.append((start, len(text), False))
    for seg_start, seg_end, question in segments:
        cuts = [m.start() for m in _CONNECTIVE_RE.finditer(text, seg_start, seg_end) if m.start() > seg_start]
        bounds = [seg_start, *cuts, seg_end]
        out.extend(_Clause(a, b, question) for a, b in zip(bounds, bounds[1:]))
    return out


def _clause_at(parts: list[_Clause], pos: int) -> _Clause:
    for c in parts:
        if c.start <= pos < c.end:
            return c
    return parts[-1] if parts else _Clause(0, 0, False)


def _matches(pattern: Pattern, text: str) -> list[tuple[int, int]]:
    """Every match from every start (overlapping); of those ending at the same place, the tightest."""
    by_end: dict[int, int] = {}
    pos = 0
    while pos <= len(text):
        m = pattern.regex.search(text, pos)
        if not m:
            break
        if m.end() > m.start():
            by_end[m.end()] = max(by_end.get(m.end(), -1), m.start())
        pos = m.start() + 1
    return sorted((start, end) for end, start in by_end.items())


def _reading(text: str, parts: list[_Clause], start: int, end: int) -> str:
    """'asserted', 'negated' or 'question' for the match text[start:end]."""
    first, last = _clause_at(parts, start), _clause_at(parts, end - 1)
    if last.question:
        return "question"
    if _NEGATOR_RE.search(text, first.start, start):
        return "negated"
    if last.start > start and _NEGATOR_RE.search(text, last.start, end):
        return "negated"
    return "asserted"


@dataclass
class CriterionResult:
    id: str
    weight: float
    status: str  # "matched" | "partial" (half the weight; claim readers only) | "contradicted" | "missing"
    evidence: str = ""  # the deciding piece of the (normalized) answer
    description: str = ""


@dataclass
class ScoreResult:
    question_id: str
    score: float
    criteria: list[CriterionResult] = field(default_factory=list)
    source: str = "rubric"  # "rubric" or "verdict" (a human's score from a verdicts file)
    rubric_score: float | None = None  # with source "verdict": what the rubric gave
    verdict: dict | None = None  # with source "verdict": the verdict line that applied (qrun.bench.verdicts)

    @property
    def matched(self) -> list[str]:
        return [c.id for c in self.criteria if c.status == "matched"]

    @property
    def contradicted(self) -> list[str]:
        return [c.id for c in self.criteria if c.status == "contradicted"]

    @property
    def partial(self) -> list[str]:
        return [c.id for c in self.criteria if c.status == "partial"]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["matched"], data["contradicted"], data["partial"] = self.matched, self.contradicted, self.partial
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ScoreResult:
        criteria = [CriterionResult(**c) for c in data.get("criteria", [])]
        return cls(
            question_id=data["question_id"],
            score=float(data["score"]),
            criteria=criteria,
            source=data.get("source", "rubric"),
            rubric_score=data.get("rubric_score"),
            verdict=data.get("verdict"),
        )

    def rubric(self) -> ScoreResult:
        """The rubric's own result (undoing a verdict, so a new verdicts file decides afresh)."""
        if self.source != "verdict" or self.rubric_score is None:
            return self
        return ScoreResult(self.question_id, self.rubric_score, self.criteria)


def _judge(criterion: Criterion, text: str, parts: list[_Clause]) -> CriterionResult:
    events = []  # (end, order, status, evidence); order puts "against" after "for" on a tie: conservative
    for patterns, is_contradiction in ((criterion.patterns, False), (criterion.contradicts, True)):
        for pattern in patterns:
            for start, end in _matches(pattern, text):
                reading = _reading(text, parts, start, end)
                if reading == "question" or (reading == "negated" and is_contradiction):
                    continue
                against = is_contradiction or reading == "negated"
                events.append((end, int(against), "contradicted" if against else "matched", text[start:end]))
    if not events:
        return CriterionResult(criterion.id, criterion.weight, "missing", "", criterion.description)
    _, _, status, evidence = max(events)
    return CriterionResult(criterion.id, criterion.weight, status, evidence, criterion.description)


def score(question: Question, answer: str) -> ScoreResult:
    """Score one answer against its question's rubric (see the module docstring for the rules)."""
    reader = readers.for_question(normalize(question.text), tuple(c.id for c in question.rubric))
    if reader is not None:
        return _score_by_reader(question, answer, reader)
    text = remove_echo(normalize(answer), question.text)
    parts = clauses(text)
    results = [_judge(c, text, parts) for c in question.rubric]
    total = sum(c.weight for c in question.rubric)
    got = sum(r.weight for r in results if r.status == "matched")
    return ScoreResult(question_id=question.id, score=round(got / total, 4), criteria=results)


def _score_by_reader(question: Question, answer: str, reader: readers.Reader) -> ScoreResult:
    text = normalize(answer)
    if reader.drop_echo:
        text = remove_echo(text, question.text)
    statuses = reader.read(claims.Text(text))
    results = [CriterionResult(c.id, c.weight, *statuses[c.id], c.description) for c in question.rubric]
    credit = {claims.MATCHED: 1.0, claims.PARTIAL: 0.5}
    got = sum(r.weight * credit.get(r.status, 0.0) for r in results)
    if reader.penalize_contradictions:
        got -= sum(r.weight for r in results if r.status == claims.CONTRADICTED)
    total = sum(c.weight for c in question.rubric)
    return ScoreResult(question_id=question.id, score=round(max(got, 0.0) / total, 4), criteria=results)


# -- human verdicts and answers files --------------------------------------------------------------------------
def load_verdicts(path) -> verdicts_mod.Verdicts:
    """A human verdicts CSV (format: qrun.bench.verdicts). Raises SuiteError naming the line of a bad entry."""
    return verdicts_mod.load(path)


def apply_verdict(result: ScoreResult, verdict: verdicts_mod.Verdict | None) -> ScoreResult:
    """The rubric's result with a human verdict's score (source "verdict"), or unchanged when verdict is None.

    Which verdict applies to which answer is decided by Verdicts.resolve over every answer at once: a verdict
    without an answer hash applies only where its answers are one text.
    """
    result = result.rubric()
    if verdict is None:
        return result
    return ScoreResult(
        result.question_id,
        verdict.score,
        result.criteria,
        source="verdict",
        rubric_score=result.score,
        verdict=verdict.to_dict(),
    )


def score_answers_file(path, suite, *, verdicts: verdicts_mod.Verdicts | None = None) -> list[dict]:
    """Score a JSONL of {"question_id", "answer", optional "model", optional "quant"} lines, in input order.

    Returns:
        [{"question_id", "model", "quant", "answer_sha256", "score", "source", "matched", "contradicted",
        "criteria", "line"}, ...]
    Raises:
        SuiteError: unreadable file, a line that is not such an object, an unknown question id (line number), or
            no answers at all (empty or blank file).
    """
    import json
    from pathlib import Path

    from qrun.errors import SuiteError

    path = Path(path)
    try:
        lines = read_input_text(path, encoding="utf-8-sig").splitlines()  # -sig: a BOM (Windows editors) is accepted
    except (OSError, UnicodeDecodeError) as err:
        raise SuiteError(f"cannot read answers file {path}: {err}", "give a UTF-8 JSONL file") from None
    out = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        hint = 'each line: {"question_id": "seed-1", "answer": "...", "model": "optional"}'
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise SuiteError(f"{path}, line {lineno}: invalid JSON ({err.msg})", hint) from None
        except RecursionError:  # "[[[[..." nested deeper than Python's parser goes
            raise SuiteError(f"{path}, line {lineno}: JSON nested too deeply", hint) from None
        if not isinstance(item, dict):
            raise SuiteError(f"{path}, line {lineno}: expected a JSON object", hint)
        for key in ("question_id", "answer"):
            if not isinstance(item.get(key), str):
                raise SuiteError(f'{path}, line {lineno}: field "{key}" missing or not a string', hint)
        model = item.get("model")
        if model is not None and not isinstance(model, str):
            raise SuiteError(f'{path}, line {lineno}: field "model" must be a string', hint)
        try:
            question = suite.question(item["question_id"])
        except SuiteError as err:
            raise SuiteError(f"{path}, line {lineno}: {err.message}", err.hint) from None
        quant = item.get("quant")
        if quant is not None and not isinstance(quant, str):
            raise SuiteError(f'{path}, line {lineno}: field "quant" must be a string', hint)
        out.append(
            {
                "line": lineno,
                "model": model,
                "quant": quant,
                "answer_sha256": verdicts_mod.answer_sha256(item["answer"]),
                **score(question, item["answer"]).to_dict(),
                "_answer": item["answer"],
            }
        )
    answers = [verdicts_mod.Answer(o["model"], o["quant"], o["question_id"], o.pop("_answer")) for o in out]
    chosen, _unmatched = (verdicts or verdicts_mod.Verdicts()).resolve(answers)
    for i, verdict in enumerate(chosen):
        if verdict is not None:
            out[i].update(apply_verdict(ScoreResult.from_dict(out[i]), verdict).to_dict())
    if not out:  # scoring nothing "successfully" would hide a wrong path or an export that failed
        raise SuiteError(
            f"no answers in {path}",
            'give a JSONL file, one answer per line: {"question_id": "seed-1", "answer": "..."}',
        )
    return out
