"""Reading the claims in an answer: clauses, negation, hedges, reported speech, corrections, and the verdict
on one rubric criterion from the claims for and against it. The per-question readers are in qrun.bench.readers.

A criterion is
- *matched*: the answer's last word on the claim is the right one;
- *contradicted*: its last word is the opposite (or it denies the right claim), or it asserts both sides with no
  correction between them ("白白喜欢明明，也就是说明明对白白有好感");
- *partial*: it hedges between both sides ("可能是…也可能是…"), worth half;
- *missing*: no claim either way.

How claims are read:

1. The text is already normalized (qrun.bench.score.normalize); single quotes around words go. It is split into
   clauses at punctuation and before contrastive or corrective connectives (而是, 但, 其实, 实际上, 不对, but, …).
2. A claim in a clause that ends with "?" asserts nothing. A claim after a negator in its clause (不是, 并非, 并不,
   不能, not, isn't, …) is negated: a negated right claim counts against; a negated wrong claim is no evidence
   ("不是明明喜欢白白" alone does not say who likes whom).
3. Reported or tentative claims ("有人说…", "很多人以为…", "第一反应是…", "看起来…") assert nothing until the
   next correction or sentence end. Claims in hedged clauses (可能, 也许, 或者, maybe, probably, could, …) are
   hedged: the right one alone counts, both sides give half, a hedged wrong one alone gives nothing.
4. When an answer asserts both sides, a correction marker between them (而是, 不对, 其实, 实际上, 但, 不过, 仔细,
   actually, but) means the later claim replaces the earlier; without one the answer contradicts itself.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# normalize(): the one normalization of answers and of rubric patterns (bench/suite.py), so they compare alike
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_DROP_RE = re.compile(r"[*_`#\"“”„‟「」『』《》〈〉]")
_CJK_SPACE_RE = re.compile(f"(?<=[{_CJK}]) (?=[{_CJK}])")


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    text = _DROP_RE.sub("", text)
    text = re.sub(r"[ \t\r\f\v]+", " ", text)
    text = re.sub(r" ?\n ?", "\n", text)
    return _CJK_SPACE_RE.sub("", text).strip()


MATCHED, PARTIAL, CONTRADICTED, MISSING = "matched", "partial", "contradicted", "missing"

_CLAUSE_PUNCT_RE = re.compile(r"[,.!?;:。、\n|—…()\[\]]+|--+|->|→|/")
_CONNECTIVE_RE = re.compile(
    r"而是|而不是|而非|但是|但(?=[^是])|可是|然而|不过|其实|实际上|事实上|不对|仔细|才是|也就是说|"
    r"\bbut\b|\bactually\b|\brather\b|\binstead\b|\bthough\b|\bit'?s\b"
)
_CORRECTION_RE = re.compile(
    r"而是|而不是|而非|但|可是|然而|不过|其实|实际上|事实上|不对|仔细|正相反|"
    r"\bbut\b|\bactually\b|\brather\b|\binstead\b|other way round|\bit'?s\b"
)
_NEGATOR_RE = re.compile(
    r"不是|并非|而非|并不|绝非|并没有|不能|不用|不必|不该|不应该|不需要|不宜|"
    r"\bnot\b|n't\b|\bisn'?t\b|rather than|instead of"
)
_HEDGE_RE = re.compile(
    r"可能|也许|或许|或者|大概|不确定|不好确定|也可以|可以理解为|不一定|\bmaybe\b|\bperhaps\b|"
    r"\bprobably\b|\bcould\b|\bmight\b|\bpossibly\b"
)
_REPORTED_RE = re.compile(r"有人说|以为|误以为|第一反应|乍一看|看起来|表面上|看似|\bseems?\b|\bat first\b")
SENTENCE_END_RE = re.compile(r"[.!?;。\n]")


@dataclass(frozen=True)
class Clause:
    start: int
    end: int
    question: bool
    hedged: bool
    reported: bool


@dataclass(frozen=True)
class Claim:
    key: str
    start: int
    end: int
    negated: bool
    hedged: bool
    evidence: str


class Text:
    """A normalized answer split into clauses, with the reading of any span in it."""

    def __init__(self, text: str):
        # single quotes around words ('he', ‘他’) go, apostrophes inside words (doesn't) stay
        text = re.sub(r"(?<![a-z])['‘’]|['‘’](?![a-z])", "", text)
        self.text = re.sub(r"(?<=[a-z]) {2,}(?=[a-z])", " ", text)
        self.clauses = self._split(text)

    @staticmethod
    def _split(text: str) -> list[Clause]:
        bounds = []
        start = 0
        for m in _CLAUSE_PUNCT_RE.finditer(text):
            bounds.append((start, m.start(), "?" in m.group()))
            start = m.end()
        bounds.append((start, len(text), False))
        pieces: list[tuple[int, int, bool]] = []
        for a, b, question in bounds:
            cuts = [m.start() for m in _CONNECTIVE_RE.finditer(text, a, b) if m.start() > a]
            edges = [a, *cuts, b]
            pieces.extend((x, y, question) for x, y in zip(edges, edges[1:]) if y > x)
        out, reported = [], False
        for i, (a, b, question) in enumerate(pieces):
            body = text[a:b]
            if _CORRECTION_RE.match(body.strip()) or (i and SENTENCE_END_RE.search(text, pieces[i - 1][1], a + 1)):
                reported = False
            if _REPORTED_RE.search(body):
                reported = True
            out.append(Clause(a, b, question, bool(_HEDGE_RE.search(body)), reported))
        return out

    def clause_at(self, pos: int) -> Clause:
        for c in self.clauses:
            if c.start <= pos < c.end:
                return c
        return self.clauses[-1]

    def claims(self, key: str, pattern: re.Pattern[str] | str, *, within: tuple[int, int] | None = None) -> list[Claim]:
        """Every asserted (possibly negated or hedged) match of pattern; questions and reported speech dropped."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        a, b = within or (0, len(self.text))
        out = []
        for m in regex.finditer(self.text, a, b):
            if m.end() == m.start():
                continue
            clause = self.clause_at(m.start())
            last = self.clause_at(m.end() - 1)
            if last.question or clause.reported or last.reported:
                continue
            negated = bool(_NEGATOR_RE.search(self.text, clause.start, m.start()))
            out.append(Claim(key, m.start(), m.end(), negated, clause.hedged or last.hedged, m.group()))
        return out

    def clause_claims(self, key: str, pattern: re.Pattern[str] | str) -> list[Claim]:
        """Clauses that consist of pattern alone ("而是他", "答案:他"), read like claims()."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        out = []
        for c in self.clauses:
            body = self.text[c.start : c.end]
            a = c.start + len(body) - len(body.lstrip())
            b = c.start + len(body.rstrip())
            m = regex.fullmatch(self.text, a, b)
            if m and b > a and not c.question and not c.reported:
                negated = bool(_NEGATOR_RE.search(self.text, a, b))
                out.append(Claim(key, a, b, negated, c.hedged, m.group()))
        return out

    def corrected_between(self, a: int, b: int) -> bool:
        return bool(_CORRECTION_RE.search(self.text, a, b))


_WORDING_RE = re.compile(r"字面|表面|看起来|形式|写法|文字|literally|wording")


def meaning_same(text: Text, key: str, pattern: re.Pattern[str] | str) -> list[Claim]:
    """Asserted claims that the two sentences mean the same; "字面意思一样" (the wording) is not one."""
    return [
        c
        for c in text.claims(key, pattern)
        if not c.negated and not _WORDING_RE.search(text.text, text.clause_at(c.start).start, c.start + 2)
    ]


def judge(text: Text, right: list[Claim], wrong: list[Claim]) -> tuple[str, str]:
    """The status of one criterion from the claims for it (right) and against it (wrong); see the module doc."""
    events = []  # (end, +1 for / -1 against, hedged, evidence)
    for c in right:
        events.append((c.end, -1 if c.negated else 1, c.hedged, c.evidence))
    for c in wrong:
        if not c.negated:  # a denied wrong claim says nothing about the right one
            events.append((c.end, -1, c.hedged, c.evidence))
    if not events:
        return MISSING, ""
    events.sort()
    firm = [e for e in events if not e[2]]
    if not firm:  # only hedged claims: the right one alone counts, both sides get half, a hedged wrong one nothing
        signs = {e[1] for e in events}
        if len(signs) == 2:
            return PARTIAL, events[-1][3]
        return (MATCHED if 1 in signs else MISSING), events[-1][3]
    final = firm[-1]
    for earlier in firm[:-1]:
        if earlier[1] != final[1] and not text.corrected_between(earlier[0], final[0] - len(final[3])):
            return CONTRADICTED, f"{earlier[3]} … {final[3]}"
    later_hedges = [e for e in events if e[2] and e[0] > final[0] and e[1] != final[1]]
    if final[1] > 0:
        return (PARTIAL if later_hedges else MATCHED), final[3]
    return CONTRADICTED, final[3]
