"""Benchmark suites: questions with scoring rubrics, one JSON file per suite.

A suite file (see bench/suites/seed.json, the default)::

    {"name": "seed", "description": "...",
     "questions": [
       {"id": "seed-4", "question": "...", "reference": "the expected answer, for people reading the report",
        "rubric": [
          {"id": "baibai-likes-mingming", "description": "...", "weight": 3,
           "patterns": ["白白喜欢明明", "re:白白(是|也)?(暗恋|爱|喜欢)(的是)?明明"],
           "contradicts": ["明明喜欢白白"]}]}]}

A pattern is a plain substring, or a Python regular expression when it starts with "re:". Both are matched,
case-insensitively, against the normalized answer (see qrun.bench.claims for normalization and the negation rule):
plain substrings are normalized for you; write regexes in normalized form — lower case, ASCII , : ? ! ; instead
of full-width ，：？！；, no quotation marks or markdown.
"weight" is a positive number (default 1); "contradicts" is optional. Any other key is refused (a misspelt
"contradict" would otherwise drop the contradictions silently).

`--suite` takes a built-in name (a file bench/suites/<name>.json) or a path to a file. Any mistake in a file is a
SuiteError naming the file, the line, the question (by position and id) and the field.
"""

from __future__ import annotations

import bisect
import json
import json.decoder
import json.scanner
import re
from dataclasses import dataclass, field
from pathlib import Path

from qrun.bench.claims import normalize  # one normalization for answers and patterns
from qrun.errors import SuiteError
from qrun.fsutil import read_input_text
from qrun.text import utf8_problem

SUITES_DIR = Path(__file__).parent / "suites"
REGEX_PREFIX = "re:"
# every key a suite file may use, per level (anything else is refused: a typo must not drop a rubric part)
SUITE_KEYS = ("name", "description", "questions")
QUESTION_KEYS = ("id", "question", "reference", "rubric")
CRITERION_KEYS = ("id", "description", "weight", "patterns", "contradicts")


@dataclass(frozen=True)
class Pattern:
    source: str  # as written in the suite file
    regex: re.Pattern


@dataclass(frozen=True)
class Criterion:
    id: str
    weight: float
    patterns: tuple[Pattern, ...]
    contradicts: tuple[Pattern, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class Question:
    id: str
    text: str
    rubric: tuple[Criterion, ...]
    reference: str = ""


@dataclass
class Suite:
    name: str
    questions: list[Question]
    path: Path
    description: str = ""
    raw: dict = field(default_factory=dict, repr=False)  # the file's content, stored with bench results

    def question(self, question_id: str) -> Question:
        for q in self.questions:
            if q.id == question_id:
                return q
        raise SuiteError(
            f"question {question_id!r} is not in suite {self.name!r}",
            f"ids in this suite: {', '.join(q.id for q in self.questions)}",
        )


class _LineDict(dict):
    """A JSON object that remembers the line it starts on, so errors can point at it."""

    line = 0


def _decoder() -> json.JSONDecoder:
    # The pure-Python scanner calls parse_object with the position of "{": we wrap it to record the line.
    decoder = json.JSONDecoder()
    # offsets of the newlines of the text being decoded, found once: counting them again for every object took
    # minutes for a suite of 10,000 questions
    newlines: dict[int, list[int]] = {}

    def parse_object(s_and_end, *args):
        text, end = s_and_end
        obj, new_end = json.decoder.JSONObject(s_and_end, *args)
        obj = _LineDict(obj)
        if id(text) not in newlines:
            newlines.clear()
            newlines[id(text)] = [match.start() for match in re.finditer("\n", text)]
        obj.line = bisect.bisect_left(newlines[id(text)], end) + 1
        return obj, new_end

    # attributes of the pure-Python decoder that typeshed does not declare
    setattr(decoder, "parse_object", parse_object)  # noqa: B010
    setattr(decoder, "scan_once", getattr(json.scanner, "py_make_scanner")(decoder))  # noqa: B010, B009
    return decoder


def available() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.json"))


def resolve(name_or_path: str) -> Path:
    """The file behind a --suite value: an existing path, else a built-in suite name.

    Raises:
        SuiteError: neither a file nor a built-in name (with the list of built-in suites).
    """
    candidate = Path(name_or_path).expanduser()
    if candidate.is_file():
        return candidate
    builtin = SUITES_DIR / f"{name_or_path}.json"
    if builtin.is_file():
        return builtin
    raise SuiteError(
        f"unknown suite {name_or_path!r} (no such built-in suite or file)",
        f"built-in suites: {', '.join(available())}; or give the path of a suite JSON file",
    )


def load(name_or_path: str = "seed") -> Suite:
    """Load and validate a suite by built-in name or path.

    Raises:
        SuiteError: unknown suite, invalid JSON or a malformed field (file, line, question and field named).
    """
    path = resolve(name_or_path)
    try:
        text = read_input_text(path)
    except (OSError, UnicodeDecodeError) as err:
        raise SuiteError(f"cannot read suite file {path}: {err}", "check the path and that it is UTF-8 JSON") from None
    return parse(text, path=path)


def parse(text: str, *, path: Path) -> Suite:
    try:
        data = _decoder().decode(text)
    except json.JSONDecodeError as err:
        raise SuiteError(
            f"{path}: line {err.lineno}, column {err.colno}: invalid JSON: {err.msg}",
            "fix the JSON syntax (a validator such as `python -m json.tool FILE` shows the spot)",
        ) from None
    except RecursionError:  # "[[[[..." nested deeper than Python's parser goes
        raise SuiteError(f"{path}: JSON nested too deeply", "a suite is an object with a list of questions") from None
    where = _Where(path)
    problem = utf8_problem(json.dumps(data, ensure_ascii=False))
    if problem:  # a "\\ud800" escape decodes to a lone surrogate, which no tokenizer can encode
        raise SuiteError(
            f"{path}: holds a string that is not text ({problem.split(' at character')[0]})",
            "remove the lone \\uD800-\\uDFFF escape (a pair of them is one character and fine)",
        )
    if not isinstance(data, dict):
        raise where.error(data, "top level", 'must be an object with "name" and "questions"')
    where.known_keys(data, SUITE_KEYS, "top level")
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise where.error(data, 'field "name"', "must be a non-empty string")
    questions_raw = data.get("questions")
    if not isinstance(questions_raw, list) or not questions_raw:
        raise where.error(data, 'field "questions"', "must be a non-empty list")
    questions, seen = [], set()
    for index, q in enumerate(questions_raw, start=1):
        question = _question(q, index, where)
        if question.id in seen:
            raise where.error(q, f'question {index}: field "id"', f"duplicate id {question.id!r}")
        seen.add(question.id)
        questions.append(question)
    return Suite(name=name, questions=questions, path=path, description=str(data.get("description", "")), raw=data)


class _Where:
    def __init__(self, path: Path):
        self.path = path

    def error(self, obj, what: str, problem: str, hint: str | None = None) -> SuiteError:
        line = getattr(obj, "line", 0)
        at = f", line {line}" if line else ""
        # SUITES_DIR is inside the installed package (package data), so this path exists for every user
        return SuiteError(
            f"{self.path}{at}: {what} {problem}",
            hint or f"see the built-in suite {SUITES_DIR / 'seed.json'} for the format",
        )

    def known_keys(self, obj: dict, allowed: tuple[str, ...], what: str) -> None:
        """A misspelt key ("contradict") would silently drop what it holds: refuse every key not in allowed."""
        for key in obj:
            if key not in allowed:
                raise self.error(obj, what, f"has unknown field {key!r}", f"valid fields here: {', '.join(allowed)}")


def _string(obj: dict, key: str, what: str, where: _Where, *, required: bool = True) -> str:
    value = obj.get(key, None if required else "")
    if not isinstance(value, str) or (required and not value.strip()):
        problem = "must be a non-empty string" if required else "must be a string"
        raise where.error(obj, f'{what}: field "{key}"', problem)
    return value


def _question(q, index: int, where: _Where) -> Question:
    what = f"question {index}"
    if not isinstance(q, dict):
        raise where.error(q, what, "must be an object")
    qid = _string(q, "id", what, where)
    what = f"question {index} ({qid})"
    where.known_keys(q, QUESTION_KEYS, what)
    text = _string(q, "question", what, where)
    rubric_raw = q.get("rubric")
    if not isinstance(rubric_raw, list) or not rubric_raw:
        raise where.error(q, f'{what}: field "rubric"', "must be a non-empty list of criteria")
    rubric = tuple(_criterion(c, f"{what}, criterion {i}", where) for i, c in enumerate(rubric_raw, start=1))
    return Question(id=qid, text=text, rubric=rubric, reference=_string(q, "reference", what, where, required=False))


def _criterion(c, what: str, where: _Where) -> Criterion:
    if not isinstance(c, dict):
        raise where.error(c, what, "must be an object")
    cid = _string(c, "id", what, where)
    what = f"{what} ({cid})"
    where.known_keys(c, CRITERION_KEYS, what)
    weight = c.get("weight", 1)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
        raise where.error(c, f'{what}: field "weight"', f"must be a positive number, not {weight!r}")
    patterns = _patterns(c, "patterns", what, where, required=True)
    contradicts = _patterns(c, "contradicts", what, where, required=False)
    return Criterion(
        id=cid,
        weight=float(weight),
        patterns=patterns,
        contradicts=contradicts,
        description=_string(c, "description", what, where, required=False),
    )


def _patterns(c: dict, key: str, what: str, where: _Where, *, required: bool) -> tuple[Pattern, ...]:
    raw = c.get(key, None if required else [])
    if not isinstance(raw, list) or (required and not raw):
        raise where.error(
            c,
            f'{what}: field "{key}"',
            "must be a non-empty list of strings" if required else "must be a list of strings",
        )
    out = []
    for i, source in enumerate(raw, start=1):
        if not isinstance(source, str) or not source.strip() or source.strip() == REGEX_PREFIX:
            raise where.error(c, f'{what}: field "{key}" item {i}', f"must be a non-empty string, not {source!r}")
        out.append(
            compile_pattern(source, lambda problem, i=i: where.error(c, f'{what}: field "{key}" item {i}', problem))
        )
    return tuple(out)


def compile_pattern(source: str, error=None) -> Pattern:
    """A rubric pattern: "re:<regex>" or a plain substring, normalized like the answers it is matched against."""
    if source.startswith(REGEX_PREFIX):
        expression = source[len(REGEX_PREFIX) :]
    else:
        expression = re.escape(normalize(source))
    try:
        regex = re.compile(expression, re.IGNORECASE)
    except re.error as err:
        if error is None:
            raise
        raise error(f"is not a valid regular expression ({err}): {source!r}") from None
    if regex.match(""):
        problem = f"matches the empty string: {source!r}"
        if error is None:
            raise ValueError(problem)
        raise error(problem)
    return Pattern(source=source, regex=regex)
