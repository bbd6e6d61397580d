"""Human verdicts: a person's score for one answer, overriding the rubric (`--verdicts CSV` on bench, report, score).

The file (UTF-8 CSV; a header line names the columns, lines starting with "#" are comments)::

    model,quant,question_id,answer_sha256,score
    qwen-7b-chat,Q4_K_M,seed-4,3f2a9c1e0b7d,1

- model: canonical name or alias; "*" = any model. quant: a GGUF type (Q4_K_M, ...); "*" or empty = any.
- answer_sha256: the answer's hash as results.json records it (`answer_sha256` of each question; at least the
  first 12 hex digits). Given, the verdict applies to that exact text and nothing else. Empty: the verdict
  applies only where every answer it covers is one and the same text — when the (model, quant, question) it
  names has answers that differ (another quant, another machine, another thread count that changed the
  floating-point sums), nobody can tell which one it was written for, so it applies to none of them.
- score: 0..1. A line whose score is empty is skipped (a template line not filled in yet).

Older 3-column files (model,question_id,score, header optional) still load: quant "*" and no hash, i.e. the
one-text rule above. `qrun report RESULTS --verdicts-template FILE` writes a file of this format with every
answer's model, quant, question and hash filled in and the score left empty.

Answer hash: sha256 of the answer text after Unicode NFC, CRLF -> LF and trimming whitespace at both ends (what
a copy through an editor or a spreadsheet may change), as 64 hex digits.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from qrun import registry, settings
from qrun.errors import QrunError, SuiteError

ANY = "*"
MIN_HASH_HEX = 12
COLUMNS = ("model", "quant", "question_id", "answer_sha256", "score")
LEGACY_COLUMNS = ("model", "question_id", "score")
_HEX_RE = re.compile(r"^[0-9a-f]+$")
_EXAMPLE = "e.g. qwen-7b-chat,Q4_K_M,seed-4,3f2a9c1e0b7d,1 under a header model,quant,question_id,answer_sha256,score"


def answer_sha256(text: str) -> str:
    """The hash a verdict names an answer by (see the module docstring for the normalization)."""
    norm = unicodedata.normalize("NFC", text).replace("\r\n", "\n").strip()
    # surrogatepass: an answers file may hold lone surrogates (JSON \\ud800): they hash as the text they are
    return hashlib.sha256(norm.encode("utf-8", errors="surrogatepass")).hexdigest()


def model_key(name: str | None) -> str:
    """Verdicts and answers name models by canonical name or alias; "", None or "*" means any model."""
    name = (name or "").strip()
    if name in ("", ANY):
        return ANY
    try:
        return registry.get(name).name
    except QrunError:  # a model qrun does not know (answers collected elsewhere): keep the name as written
        return name.lower()


def quant_key(name: str | None) -> str:
    """Canonical quant spelling; "", None or "*" means any quant. A name qrun does not know is kept upper-cased
    (a GGUF benched by path whose file name carries no type is recorded as "?")."""
    name = (name or "").strip().upper()
    if name in ("", ANY):
        return ANY
    return name


@dataclass(frozen=True)
class Answer:
    """What a verdict is matched against: one answer of one run (or one line of an answers file)."""

    model: str | None
    quant: str | None
    question_id: str
    text: str

    @property
    def sha256(self) -> str:
        return answer_sha256(self.text)


@dataclass(frozen=True)
class Verdict:
    line: int
    model: str  # model_key() form
    quant: str  # quant_key() form
    question_id: str
    answer_sha256: str | None  # a lower-case hex prefix of >= MIN_HASH_HEX digits, or None
    score: float

    def covers(self, answer: Answer, *, ignore_hash: bool = False) -> bool:
        return (
            self.question_id == answer.question_id
            and self.model in (ANY, model_key(answer.model))
            and self.quant in (ANY, quant_key(answer.quant))
            and (ignore_hash or self.answer_sha256 is None or answer.sha256.startswith(self.answer_sha256))
        )

    def to_dict(self) -> dict:
        return {
            "line": self.line,
            "model": self.model,
            "quant": self.quant,
            "question_id": self.question_id,
            "answer_sha256": self.answer_sha256,
            "score": self.score,
        }

    def describe(self) -> str:
        who = f"{self.model} {self.quant} {self.question_id}"
        return (
            f"line {self.line} ({who}"
            + (f" answer {self.answer_sha256[:MIN_HASH_HEX]}" if self.answer_sha256 else "")
            + ")"
        )


@dataclass
class Verdicts:
    """A loaded verdicts file. Empty (falsy) when no --verdicts was given."""

    items: list[Verdict] = field(default_factory=list)
    path: str | None = None
    legacy: bool = False  # a 3-column file: no quant, no answer hash

    def __bool__(self) -> bool:
        return bool(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def note(self) -> str | None:
        """One line on how an old 3-column file is applied (None for the current format)."""
        if not self.legacy:
            return None
        return (
            f"note: {self.path} has 3-column verdicts (model,question_id,score): each applies only where all "
            f"the answers it covers are one text; add quant and answer_sha256 columns to be exact "
            f"(`qrun report RESULTS --verdicts-template FILE` writes them)"
        )

    def resolve(self, answers: list[Answer]) -> tuple[list[Verdict | None], list[dict]]:
        """Decide which verdict applies to each answer.

        Returns:
            (per answer the verdict that applies or None, the verdicts that applied to nothing: their to_dict()
            plus "reason"). Of several verdicts covering one answer the most specific wins (answer hash, then
            quant, then model), then the later line.
        """
        hashes = [a.sha256 for a in answers]
        chosen: list[Verdict | None] = [None] * len(answers)
        unmatched = []
        for v in self.items:
            covered = [i for i, a in enumerate(answers) if v.covers(a)]
            texts = sorted({hashes[i] for i in covered})
            if not covered:
                unmatched.append({**v.to_dict(), "reason": self._why_nothing(v, answers, hashes)})
                continue
            if len(texts) > 1:
                shown = ", ".join(h[:MIN_HASH_HEX] for h in texts)
                unmatched.append(
                    {
                        **v.to_dict(),
                        "reason": f"ambiguous: {len(texts)} different answers ({shown}); "
                        "give answer_sha256 to say which one it is for",
                    }
                )
                continue
            for i in covered:
                earlier = chosen[i]
                if earlier is None or _specificity(v) >= _specificity(earlier):
                    chosen[i] = v
        return chosen, unmatched

    @staticmethod
    def _why_nothing(v: Verdict, answers: list[Answer], hashes: list[str]) -> str:
        if v.answer_sha256:
            other = sorted({hashes[i] for i, a in enumerate(answers) if v.covers(a, ignore_hash=True)})
            if other:
                return (
                    f"answer_sha256 {v.answer_sha256[:MIN_HASH_HEX]} is not the answer's "
                    f"({', '.join(h[:MIN_HASH_HEX] for h in other)}): the answer changed since the verdict was "
                    "written"
                )
        return "no answer of that model, quant and question"


def _specificity(v: Verdict) -> tuple:
    return (v.answer_sha256 is not None, v.quant != ANY, v.model != ANY, v.line)


def load(path: str | Path) -> Verdicts:
    """Read a verdicts CSV (see the module docstring).

    Raises:
        SuiteError: unreadable file, a line with the wrong number of fields, an unknown quant, an answer hash that
            is not 12+ hex digits, or a score outside 0..1 — naming the line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise SuiteError(f"cannot read verdicts file {path}: {err}", f"give a CSV, {_EXAMPLE}") from None
    reader = csv.reader(io.StringIO(text, newline=""))  # not splitlines(): a quoted answer may span lines
    records, start = [], 1
    try:
        for row in reader:
            records.append((start, row))  # numbered by the line the record starts on
            start = reader.line_num + 1
    except csv.Error as err:
        raise SuiteError(f"{path}, line {reader.line_num}: not CSV ({err})", _EXAMPLE) from None
    columns: tuple[str, ...] | None = None
    items, legacy, seen_data = [], False, False
    for lineno, row in records:
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        cells = [c.strip() for c in row]
        header = columns is None and not seen_data and {"question_id", "score"} & {c.lower() for c in cells}
        seen_data = True
        if header:  # the first line names the columns
            columns = tuple(c.lower() for c in cells)
            missing = [c for c in LEGACY_COLUMNS if c not in columns]
            if missing:
                raise SuiteError(f"{path}, line {lineno}: the header lacks column(s) {', '.join(missing)}", _EXAMPLE)
            continue
        if columns is None:  # no header: 3 fields (the old format) or 5 (the current one)
            if len(cells) not in (3, 5):
                raise SuiteError(
                    f"{path}, line {lineno}: expected 5 fields (model,quant,question_id,answer_sha256,"
                    f"score) or 3 (model,question_id,score), got {len(cells)}",
                    _EXAMPLE,
                )
            named = dict(zip(COLUMNS if len(cells) == 5 else LEGACY_COLUMNS, cells))
        else:
            if len(cells) != len(columns):
                raise SuiteError(
                    f"{path}, line {lineno}: expected {len(columns)} fields like the header, got {len(cells)}",
                    'quote a field that holds a comma, e.g. "a, b"',
                )
            named = dict(zip(columns, cells))
        if named["score"] == "":
            continue
        legacy = legacy or "quant" not in named
        items.append(_verdict(path, lineno, named))
    return Verdicts(items, str(path), legacy)


def _verdict(path: Path, lineno: int, named: dict) -> Verdict:
    where = f"{path}, line {lineno}"
    try:
        value = float(named["score"])
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise SuiteError(f'{where}: field "score" must be a number from 0 to 1, got {named["score"]!r}', _EXAMPLE)
    quant = quant_key(named.get("quant"))
    if quant != ANY and quant not in settings.QUANTS:
        raise SuiteError(f"{where}: unknown quant {named['quant']!r}", f"use * or one of: {', '.join(settings.QUANTS)}")
    digest = (named.get("answer_sha256") or "").lower() or None
    if digest is not None and (len(digest) < MIN_HASH_HEX or len(digest) > 64 or not _HEX_RE.match(digest)):
        raise SuiteError(
            f"{where}: answer_sha256 {named['answer_sha256']!r} is not {MIN_HASH_HEX}-64 hex digits",
            "copy it from results.json or `qrun report RESULTS --verdicts-template FILE`",
        )
    if not named["question_id"]:
        raise SuiteError(f'{where}: field "question_id" is empty', _EXAMPLE)
    return Verdict(lineno, model_key(named["model"]), quant, named["question_id"], digest, value)


def template(rows: list[dict]) -> str:
    """A verdicts CSV with one line per distinct answer and the score left empty.

    Args:
        rows: {"model", "quant", "question_id", "answer", "rubric_score"} dicts, in the order to write.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*COLUMNS, "rubric_score", "answer"])
    seen = set()
    for r in rows:
        key = (r["model"], r["quant"], r["question_id"], answer_sha256(r["answer"]))
        if key in seen:
            continue
        seen.add(key)
        rubric = "" if r.get("rubric_score") is None else f"{r['rubric_score']:g}"
        writer.writerow([*key, "", rubric, r["answer"]])
    return buf.getvalue()
