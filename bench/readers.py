"""Claim readers for the five seed questions: what an answer asserts, not which words it contains.

A keyword rubric gives credit to "冬天少穿，夏天多穿" (the right words, the wrong claim) and none to "天冷往身上
加衣服，天热能脱就脱" (the right claim in other words). A reader extracts the claims an answer makes — which way
each season goes, who looks down on whom (and which reading has 谁 as subject), who does not know, who likes
whom, which gloss goes with which 意思 — and judges each rubric criterion from them with qrun.bench.claims (see
there for negation, hedges, corrections and contradictions).

Each reader is tied to its question's exact text and criterion ids (bench/suites/seed.json); a suite that changes
either is scored by its patterns instead (qrun.bench.score).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from qrun.bench.claims import CONTRADICTED, MATCHED, MISSING, PARTIAL, SENTENCE_END_RE, Claim, Text, judge, meaning_same

# -- seed-1: 冬天/夏天 能穿多少穿多少 -------------------------------------------------------------------------------
_WINTER = r"冬|寒|冷|winter|cold"
_SUMMER = r"夏|三伏|热|炎|summer|hot|heat"
_MORE = (
    r"(指|取|偏向?|偏重|侧重|意为|表示|强调|重在)多|多穿|穿(得|的)?(越|太|很)?多|越多越好|尽(量|可能)(地)?多|(?<!不)能多|"
    r"多的意思|往上加|加衣|加法|裹|套|保暖|穿厚|厚实|\bpile on\b|bundle up|as (much|many)\b|\bmore\b"
)
_LESS = (
    r"(指|取|偏向?|偏重|侧重|意为|表示|强调|重在)少|不(用|必|要|需要)穿(很|太|那么)?多|少穿|穿(得|的)?(越|太|很)?少|越少|"
    r"尽(量|可能)(地)?少|(?<!不)能少|少的意思|往下减|能减|减法|能脱|脱|凉快|清凉|穿薄|轻薄|背心|只穿|"
    r"as (little|few)\b|\bless\b|\bfewer\b|\bshed\b"
)
_SAME_1 = (
    r"没(有)?(任何|什么)?区别|意思(完全|都)?(一样|相同)|都是(说|指|一个意思)|同一个意思|都理解为|都是量力|"
    r"mean the same|same thing|regardless of"
)
_FLIP_1 = (
    r"字面|一模一样|完全相同|完全一样|歧义|语境|相反|反过来|偏向|偏重|取多|取少|冷热不同|季节不同|"
    r"context|identical|wording|flips|opposite"
)


def _season_claims(text: Text) -> dict[str, list[Claim]]:
    """{"winter:more": [...], "winter:less": [...], "summer:more": [...], "summer:less": [...]}: each direction
    bound to the nearest season named before it in its sentence (or after it, when none is before)."""
    t = text.text.replace("多少", "##")  # 多少 is neither direction ("能穿多少穿多少" restated)
    seasons = [
        (m.start(), "winter" if re.match(_WINTER, m.group()) else "summer")
        for m in re.finditer(f"{_WINTER}|{_SUMMER}", t)
    ]
    masked = Text(t)
    masked.clauses = text.clauses
    out: dict[str, list[Claim]] = {f"{s}:{d}": [] for s in ("winter", "summer") for d in ("more", "less")}
    for direction, pattern in (("more", _MORE), ("less", _LESS)):
        for claim in masked.claims(direction, pattern):
            sentence_start = max([m.end() for m in SENTENCE_END_RE.finditer(t, 0, claim.start)] or [0])
            before = [s for s in seasons if sentence_start <= s[0] < claim.start]
            after = [s for s in seasons if claim.start <= s[0] and not SENTENCE_END_RE.search(t, claim.end, s[0])]
            season = before[-1][1] if before else (after[0][1] if after else None)
            if season and claim.negated:  # two directions only: "冬天不能少穿" says more, "并不是越多越好" less
                flipped = "less" if direction == "more" else "more"
                out[f"{season}:{flipped}"].append(
                    Claim(flipped, claim.start, claim.end, False, claim.hedged, claim.evidence)
                )
            elif season:
                out[f"{season}:{direction}"].append(claim)
    return out


def read_seed1(text: Text) -> dict[str, tuple[str, str]]:
    claims = _season_claims(text)
    same = meaning_same(text, "same", _SAME_1)
    winter = judge(text, claims["winter:more"], claims["winter:less"] + same)
    summer = judge(text, claims["summer:less"], claims["summer:more"] + same)
    flip = [c for c in text.claims("flip", _FLIP_1) if not c.negated]
    if flip and not (same and not same[-1].hedged):
        words = (MATCHED, flip[-1].evidence)
    elif same and not same[-1].hedged:
        words = (CONTRADICTED, same[-1].evidence)
    else:
        words = (MISSING, "")
    return {"winter-more": winter, "summer-less": summer, "same-words": words}


# -- seed-2: 一是谁都看不上，二是谁都看不上 ------------------------------------------------------------------------
_SELF = r"(他|她|我|自己|单身狗|本人|he|him)"
_OTHERS = r"(别人|任何人|其他人|所有人|人家|大家|每个人|谁|anyone|everyone|everybody|others)"
_DOWN = r"(都|也|就|压根|根本)?(看不上|瞧不上|看不起|嫌弃|挑|拒绝|不要|不喜欢|不正眼瞧)"
_UP = r"(看得上|看上|瞧得上|喜欢|要|搭理|理)"
_READING_A = re.compile(
    f"{_SELF}(自己|本人)?{_DOWN}{_OTHERS}|{_SELF}(自己)?(对)?谁都{_DOWN}|{_SELF}(自己)?(太|很)?挑|"
    r"(眼光|要求|标准|心气)(太|很|过|特别)?高|挑剔|太挑|挑三拣四|这个不行那个也不行|谁来都嫌弃|"
    r"看不上任何人|瞧不上任何人|主动拒绝|\b(he|she)\b (looks|look) down on|\b(he|she)\b rejects (everyone|everybody)|"
    r"too picky|nobody is good enough for|\b(he|she) (doesn'?t|does not) (like|want|fancy) (anyone|anybody)|"
    r"\b(he|she) (likes|wants) (no one|nobody)|looks? down on (everyone|everybody|others|anyone)|"
    f"(看不上|瞧不上|看不起|嫌弃)的(发出者|主体|施事者?|一方)(是|为){_SELF}"
)
_READING_B = re.compile(
    f"{_OTHERS}(都|也)?{_DOWN}{_SELF}|(没有人|没人|谁也不|谁都不|没有谁)(能)?{_UP}|没人要|没市场|被(人|别人)?看不上|"
    r"被动被拒|被看不上|不正眼瞧|(nobody|no one) (likes|wants|looks at|is interested in)|"
    f"(看不上|瞧不上|看不起|嫌弃)的(发出者|主体|施事者?|一方)(是|为){_OTHERS}|"
    r"(everyone|everybody|others) rejects? (him|her)"
)
_SAME_2 = re.compile(
    r"没(有)?(任何|什么)?区别|意思(完全|都)?(一样|相同)|同一个(原因|意思)|只是重复|重复了两遍|重复强调|重复一遍|都是(他|一个意思)|"
    r"两句都是|类似的意思|也是类似|the same|also means|repeats itself"
)
_ROLE_RE = re.compile(r"谁(是|作|做|为|当|就是)?(主语|宾语)|谁 is the (subject|object)")
_ROLES_BOTH = re.compile(r"(主语|宾语|主动|被动|subject|object|passive|active)")


def _segments(text: str) -> list[tuple[int, int]]:
    """Sentences and the halves of "一是…二是…"-style answers: where a reading and its grammar go together."""
    cuts = sorted(
        {
            0,
            len(text),
            *(
                m.start()
                for m in re.finditer(
                    r"[;。\n]|第[一二]|[一二]是|前(者|一)|后(者|一)|另一"
                    r"|\bthe (first|second)\b|\bin the (first|second)\b",
                    text,
                )
            ),
        }
    )
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def read_seed2(text: Text) -> dict[str, tuple[str, str]]:
    t = text.text
    a_claims = text.claims("A", _READING_A)
    b_claims = text.claims("B", _READING_B)
    # "the other way round", "谁都看不上他" both also match the A pattern's tail: a B match covering an A match wins
    a_claims = [
        a for a in a_claims if not any(b.start <= a.start < b.end or a.start <= b.start < a.end for b in b_claims)
    ]
    same = meaning_same(text, "same", _SAME_2)
    # the same reading given for both halves ("一是别人看不上他，二是别人也看不上他") says they do not differ
    halves = [(m.start(), m.group()) for m in re.finditer(r"一是|第一|前(者|一)|二是|第二|后(者|一)|另一", t)]
    firsts = [
        h for h in halves if h[1][-1] in "一是者" and not h[1].startswith(("二", "后", "另")) and "二" not in h[1]
    ]
    seconds = [h for h in halves if h[1].startswith(("二", "后", "另")) or "二" in h[1]]
    if firsts and seconds and firsts[0][0] < seconds[0][0]:
        split_at = seconds[0][0]
        first_kinds = {c.key for c in a_claims + b_claims if c.start < split_at and not c.negated}
        second_kinds = {c.key for c in a_claims + b_claims if c.start >= split_at and not c.negated}
        if len(first_kinds) == 1 and first_kinds == second_kinds:
            echo = max(a_claims + b_claims, key=lambda c: c.end)
            same.append(Claim("same", echo.start, echo.end, False, echo.hedged, echo.evidence))
    firm_same = [c for c in same if not c.hedged]
    status_a = judge(text, a_claims, firm_same)  # a hedged "也是类似的意思" is about the second half only
    status_b = judge(text, b_claims, same)
    # grammar: a role claim about 谁, checked against the reading stated in the same segment
    wrong_role: list[str] = []
    right_role: list[str] = []
    for seg in _segments(t):
        roles = [m for m in _ROLE_RE.finditer(t, *seg)]
        if not roles:
            continue
        has_a = any(seg[0] <= c.start < seg[1] for c in a_claims)
        has_b = any(seg[0] <= c.start < seg[1] for c in b_claims)
        for m in roles:
            role = "subject" if ("主语" in m.group() or "subject" in m.group()) else "object"
            if has_a != has_b:
                ok = (role == "object") if has_a else (role == "subject")
                (right_role if ok else wrong_role).append(m.group())
    both_roles = {m.group() for m in _ROLES_BOTH.finditer(t)}
    names_contrast = (
        any(pair <= both_roles for pair in ({"主语", "宾语"}, {"主动", "被动"}, {"subject", "object"}))
        or "passive" in both_roles
    )
    if wrong_role:
        grammar = (CONTRADICTED, wrong_role[-1])
    elif right_role or names_contrast:
        grammar = (MATCHED, (right_role or sorted(both_roles))[-1])
    else:
        grammar = (MISSING, "")
    if same and status_a[0] != MATCHED and status_b[0] != MATCHED:
        grammar = (CONTRADICTED, same[-1].evidence) if grammar[0] != MISSING else grammar
    # the subject/object contrast stated without the readings states both readings in the abstract: half each
    if grammar[0] == MATCHED and names_contrast and status_a[0] == MISSING and status_b[0] == MISSING:
        status_a = status_b = (PARTIAL, grammar[1])
    return {
        "reading-looks-down-on-others": status_a,
        "reading-nobody-wants-them": status_b,
        "subject-vs-object": grammar,
    }


# -- seed-3: 他知道我知道你知道他不知道吗 ---------------------------------------------------------------------------
_NOT_KNOW = r"(不知道|不清楚|不晓得|不知情|蒙在鼓里|不了解)"
_PERSON = {"he": r"他|\bhe\b|\bhim\b", "me": r"我|\bme\b|\bi\b", "you": r"你|\byou\b"}


def read_seed3(text: Text) -> dict[str, tuple[str, str]]:
    t = text.text
    found: dict[str, list[Claim]] = {p: [] for p in _PERSON}
    inclusive: list[Claim] = []
    for person, word in _PERSON.items():
        patterns = [
            f"(?<!其)(?:{word})(自己|本人)?(才|就|是|也|都)?{_NOT_KNOW}",
            f"{_NOT_KNOW}的(人|那个人|一方|那位)?(只能|就|才|应该|其实|真正)?(是|就是|只能是|即)[^,.;。]{{0,6}}?"
            f"([,]?也就是)?(?:{word})(?![知])",
            f"(答案|answer)\\s*(是|:|is)?\\s*(?:{word})(?![知])",
            f"(?:{word}) is the (one|person)( who)? (does not|doesn't|did not|didn't) know",
            f"(it'?s|it is) (?:{word}) who",
            f"(left in the dark|does ?n[o']t know|doesn't know)[^.;]{{0,20}}\\bis\\b[^.;]{{0,4}}(?:{word})",
            f"(?:{word}) (who )?(does not|doesn't|did not|didn't) know",
            f"(read as|或者是|也可能是) ?(?:{word})\\b",
        ]
        claims = [c for p in patterns for c in text.claims(person, re.compile(p))]
        claims += text.clause_claims(
            person, re.compile(f"(而是|是|才是|答案是?|answer:?|probably|maybe|也许是|可能是)?\\s*(?:{word})(本人)?")
        )
        for claim in claims:
            found[person].append(claim)
            prefix = t[text.clause_at(claim.start).start : claim.end]
            if person != "he" and re.search(r"也|都|俩|\balso\b|\bboth\b", prefix):
                inclusive.append(claim)
    # "他知道", "他当然知道", "他并不是不知道": he knows — against
    knows = text.claims(
        "knows",
        re.compile(
            r"他(并)?不是不知道|他(当然|其实|也)?(什么都)?知道(?!我)(?!你)|"
            r"(谁|每个人|大家|所有人|三个人|他们)都知道|没有人不知道|无法(确定|判断)|"
            r"不能确定|everyone (else )?knows"
        ),
    )
    knows = [c for c in knows if not c.negated and not re.match(r"他知道$", t[c.start : c.end + 1].rstrip())]
    # a sentence-initial "他知道，我也知道" is scene-setting only if another person is then named as the one
    knows = [c for c in knows if c.evidence != "他知道" or not found["he"]]
    others = [c for p in ("me", "you") for c in found[p] if c not in inclusive]
    status = judge(text, found["he"], others + knows)
    if status[0] == MATCHED and [c for c in inclusive if not c.negated]:
        status = (PARTIAL, status[1])
    return {"he-does-not-know": status}


# -- seed-4: 明明明明明白白白喜欢他 ----------------------------------------------------------------------------------
_LIKE = r"(是|其实|一直|才是|才|也|就)?(暗恋|喜欢|爱慕|喜爱|爱上|爱|对.?有(意思|好感|感觉)|动心)"
_NAMES = {"M": r"明明|mingming", "B": r"白白|baibai"}


def read_seed4(text: Text) -> dict[str, tuple[str, str]]:
    # "她(白白)喜欢他(明明)" and "白白喜欢他 … 他就是明明" name the people the pronouns stand for
    t = re.sub(r"(他|她|him|her)\s*\((也就是|即|指|就是)?(明明|白白|mingming|baibai)\)", r"\3", text.text)
    he = re.search(r"(这里的|句中的|句子里的)?他(指的?是|就是|即|也就是|=)(明明|白白)", t)
    if he:
        t = re.sub(
            r"(白白|明明)(是|其实|一直|才是|才|也|就)?(暗恋|喜欢|爱)他(?![(\u4e00-\u9fff])",
            lambda mt: mt.group(0)[:-1] + he.group(3),
            t,
        )
    if t != text.text:
        text = Text(t)
    m, b = _NAMES["M"], _NAMES["B"]
    third = r"(他\(?(另一个|别的|某个)|某个男生|另一个男生|别人|第三)"

    def pair(x, y):
        return [
            f"(?:{x}){_LIKE}(的人|的)?(是|的是|就是)?(?:{y})",
            f"(?:{x})对(?:{y})有(意思|好感|感觉)",
            f"(?:{y})(是)?被(?:{x})(所)?(喜欢|暗恋|爱)",
            f"喜欢(?:{y})的(人|那个人)?(是|就是)(?:{x})",
            f"(?:{x})(才)?是喜欢(?:{y})的",
            f"(?:{x})\\s*(→|->)\\s*(喜欢\\s*(→|->)\\s*)?(?:{y})",
            f"(?:{x}) (likes|loves|adores|has a crush on|is in love with|is fond of|fancies) (?:{y})",
            f"(?:{x})(对|喜欢)他\\((?:{y})\\)",
        ]

    right = [c for p in pair(b, m) for c in text.claims("B>M", re.compile(p))]
    right += text.claims(
        "B>M",
        re.compile(
            f"(被喜欢的(那位|人|一方)?(就)?是(?:{m}))|((?:{m})(是|就是)被喜欢的)|(动心的是(?:{b}))|"
            f"((?:{b})是喜欢人的)|(对象是(?:{m}))|(the other way round)"
        ),
    )
    # "the other way round" reverses a denied "Mingming likes Baibai" just before it, and nothing else
    denied_reverse = r"(mingming|明明).{0,12}(likes|喜欢).{0,3}(baibai|白白)"
    right = [
        c
        for c in right
        if c.evidence != "the other way round" or re.search(denied_reverse, t[max(0, c.start - 60) : c.start])
    ]
    wrong = [c for p in pair(m, b) for c in text.claims("M>B", re.compile(p))]
    wrong += text.claims("M>B", re.compile(f"((?:{b})是被喜欢的)|(被喜欢的(人|一方)?(就)?是(?:{b}))"))
    wrong += text.claims("third", re.compile(f"(?:{b}){_LIKE}{third}|(?:{b})也喜欢他(?!\\()|没有谁喜欢谁"))
    if re.search(third, t) and not right:  # 他 was said to be someone else: "白白喜欢他" is about that one
        wrong += text.claims("third", re.compile(f"(?:{b}){_LIKE}他"))
    wrong = [c for c in wrong if c.key != "third" or not c.negated]
    status = judge(text, right, wrong)
    mutual = text.claims("mutual", re.compile(r"互相喜欢|相互喜欢|彼此喜欢|两情相悦|\bboth like each other\b"))
    if mutual and not any(c.negated for c in mutual):
        status = (PARTIAL, mutual[-1].evidence) if status[0] in (MATCHED, MISSING) else status
    if status[0] == MISSING:  # "白白喜欢他" with 他 never resolved: the parse, not the answer to who likes whom
        parse_shown = [c for c in text.clauses if c.start and t[c.start - 1] == "/"]  # 明明/明明白白/白白喜欢他
        unresolved = [
            c
            for c in text.claims("B>he", re.compile(f"(?:{b}){_LIKE}他(?![(\\u4e00-\\u9fff])"))
            if not c.negated and text.clause_at(c.start) not in parse_shown
        ]
        if unresolved:
            status = (PARTIAL, unresolved[-1].evidence)
    understands = text.claims(
        "understands",
        re.compile(
            f"(?:{m})(是|其实|心里|自己|只是)?(很|非常|十分|清清楚楚地?|清楚地|明明白白地?)?(明白|清楚|知道|懂|心知肚明|"
            r"门儿清)|mingming (clearly )?(knows|understands|is aware)"
        ),
    )
    return {
        "baibai-likes-mingming": status,
        "mingming-understands": (MATCHED, understands[-1].evidence) if understands else (MISSING, ""),
    }


# -- seed-5: the nine 意思 ------------------------------------------------------------------------------------------
# the nine occurrences, longest key phrase first so "没什么意思" is not read as "什么意思"
_OCCURRENCES = [
    (9, r"是我不好意思"),
    (8, r"那我就不好意思了?"),
    (7, r"没有?别的意思"),
    (2, r"没什么意思"),
    (4, r"不够意思"),
    (3, r"意思意思"),
    (1, r"什么意思"),
    (5, r"小意思"),
    (6, r"有意思"),
    (8, r"不好意思"),
]
_GLOSSES = {
    1: r"用意|意图|目的|想(要)?(表达|干|做)(什么|嘛|啥)|想干嘛|到底想|什么意图|intention|intent\b|what do you mean",
    2: r"没(有)?(什么|啥)?(特别|特殊)|没(什么|啥)(?!意思)|随便|随口|nothing (special|in particular|much)",
    3: r"心意|礼物|小礼|送礼|送点|红包|送钱|塞钱|给点|请客|表示一下|表示表示|意思一下|略表|好处"
    r"|gift|token|little something|present",
    4: r"不够(朋友|义气|仗义|大方|慷慨|交情|情面|厚道)|不讲(义气|交情)|小气|吝啬|不近人情|not generous|"
    r"not (a good|much of a) friend",
    5: r"微不足道|不值一提|不足挂齿|区区|小事|不成敬意|薄礼|不算(啥|什么)|小东西|不值钱|微薄"
    r"|trifle|small thing|no big deal|not a big deal",
    6: r"有趣|好玩|幽默|风趣|会做人|上道|懂事|识趣|会来事|会办事|懂规矩|识相|有眼力|机灵|有一套"
    r"|interesting|funny|play the game",
    7: r"没(有)?别的(意图|用意|目的|想法|企图|要求)|别无(他意|所求|所图)|ulterior|no other (intention|purpose|motive)",
    8: r"收下|收了|笑纳|不好推辞|却之不恭|接受|难为情|accept",
    9: r"过意不去|抱歉|歉意|惭愧|客套|客气|谦虚|自谦|sorry|apolog",
}
_ORDINALS = {"一": 1, "二": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}
_CIRCLED = "①②③④⑤⑥⑦⑧⑨"
_INDEX_RE = re.compile(
    r"(?:(?<![0-9])([1-9])(?:\s*-\s*([1-9]))?(?=[.、:)\s]|$)|第([一二三四五六七八九1-9])(?:个|句|处)|"
    r"(最后一个|最后那个)|([①②③④⑤⑥⑦⑧⑨])|(?<![\u4e00-\u9fff])([一二三四五六七八九])(?=、))"
)
_SAME_5 = re.compile(
    r"(所有|以上|这些|全部)的?.{0,4}意思.{0,6}(其实|都)(都)?(是|指)(同一个|一个|送礼|含义)|"
    r"都是同一个意思|其实都是(一个|同一个)"
)


def _items_by_index(t: str) -> dict[int, tuple[int, int]]:
    marks = []
    for mt in _INDEX_RE.finditer(t):
        if mt.group(1):
            lo, hi = int(mt.group(1)), int(mt.group(2) or mt.group(1))
        elif mt.group(3):
            lo = hi = _ORDINALS.get(mt.group(3)) or int(mt.group(3))
        elif mt.group(4):
            lo = hi = 9
        elif mt.group(5):
            lo = hi = _CIRCLED.index(mt.group(5)) + 1
        else:
            lo = hi = _ORDINALS[mt.group(6)]
        marks.append((mt.start(), mt.end(), lo, hi))
    # an index list counts when it runs in order from the start (1, 2, ... or 第一个, 第三个, ...)
    marks = [mk for i, mk in enumerate(marks) if i == 0 or mk[2] > marks[i - 1][3]]
    if len({mk[2] for mk in marks}) < 3:
        return {}
    items = {}
    for i, (_start, end, lo, hi) in enumerate(marks):
        stop = marks[i + 1][0] if i + 1 < len(marks) else len(t)
        for k in range(lo, hi + 1):
            items[k] = (end, stop)
    return items


def _items_by_phrase(t: str) -> dict[int, tuple[int, int]]:
    taken: set[int] = set()
    marks: list[tuple[int, int, int]] = []
    for k, phrase in _OCCURRENCES:
        for mt in re.finditer(phrase, t):
            span = set(range(mt.start(), mt.end()))
            if span & taken:
                continue
            if k == 8 and any(mk[2] == 8 for mk in marks):
                continue
            taken |= span
            marks.append((mt.start(), mt.end(), k))
    marks.sort()
    items: dict[int, tuple[int, int]] = {}
    for i, (_start, end, k) in enumerate(marks):
        stop = marks[i + 1][0] if i + 1 < len(marks) else len(t)
        items.setdefault(k, (end, stop))
    return items


def read_seed5(text: Text) -> dict[str, tuple[str, str]]:
    t = text.text
    ids = {
        1: "1-intention",
        2: "2-nothing-special",
        3: "3-token-gift",
        4: "4-not-generous",
        5: "5-trifle",
        6: "6-interesting",
        7: "7-no-other-intention",
        8: "8-leader-accepts",
        9: "9-xiaoming-sorry",
    }
    out = {cid: (MISSING, "") for cid in ids.values()}
    items = _items_by_index(t) or _items_by_phrase(t)
    if not items:
        segments = [s for s in re.split(r"[;。\n]", t) if s.strip()]
        if len(segments) >= 7:  # a bare list of glosses in the occurrences' order
            pos, items = 0, {}
            for k, seg in enumerate(segments[:9], start=1):
                start = t.index(seg, pos)
                items[k] = (start, start + len(seg))
                pos = start + len(seg)
        else:  # prose: a sentence glossing exactly one occurrence is taken as about that one
            for seg in segments:
                kinds = [k for k, g in _GLOSSES.items() if re.search(g, seg)]
                if len(kinds) == 1 and kinds[0] not in items:
                    start = t.index(seg)
                    items[kinds[0]] = (start, start + len(seg))
    for k, (a, b) in items.items():
        body = t[a:b]
        for _, phrase in _OCCURRENCES:  # the quoted phrase is not its own gloss ("没什么意思" is not "没什么")
            body = re.sub(phrase, " ", body)
        sub = Text(body.replace("?", ","))  # a gloss may itself be a question: "你想干什么?"
        own = sub.claims("own", _GLOSSES[k])
        other = [c for j, g in _GLOSSES.items() if j != k for c in sub.claims("other", g)]
        if own:
            status = judge(sub, own, [])
            out[ids[k]] = status if status[0] != PARTIAL else (MISSING, status[1])
        elif other:
            out[ids[k]] = (CONTRADICTED, other[-1].evidence)
    same = [c for c in text.claims("same", _SAME_5) if not c.negated]
    if same:
        out = {cid: (CONTRADICTED, same[-1].evidence) for cid in ids.values()}
    return out


@dataclass(frozen=True)
class Reader:
    question_text: str  # normalized
    criterion_ids: tuple[str, ...]
    read: Callable[[Text], dict[str, tuple[str, str]]]  # Text -> {criterion id: (status, evidence)}
    penalize_contradictions: bool  # a contradicted criterion subtracts its weight (a wrong claim costs)
    drop_echo: bool = True  # False where the question's own phrases carry the answer's claims (seed-2, seed-5)


def for_question(question_text_norm: str, criterion_ids: tuple[str, ...]) -> Reader | None:
    for reader in READERS:
        if reader.question_text == question_text_norm and reader.criterion_ids == criterion_ids:
            return reader
    return None


READERS = (
    Reader(
        "请说出以下两句话区别在哪里?1、冬天:能穿多少穿多少 2、夏天:能穿多少穿多少",
        ("winter-more", "summer-less", "same-words"),
        read_seed1,
        True,
    ),
    Reader(
        "请说出以下两句话区别在哪里?单身狗产生的原因有两个,一是谁都看不上,二是谁都看不上",
        ("reading-looks-down-on-others", "reading-nobody-wants-them", "subject-vs-object"),
        read_seed2,
        True,
        drop_echo=False,
    ),
    Reader("他知道我知道你知道他不知道吗?这句话里,到底谁不知道", ("he-does-not-know",), read_seed3, True),
    Reader(
        "明明明明明白白白喜欢他,可她就是不说。这句话里,明明和白白谁喜欢谁?",
        ("baibai-likes-mingming", "mingming-understands"),
        read_seed4,
        True,
    ),
    Reader(
        "领导:你这是什么意思?小明:没什么意思。意思意思。领导:你这就不够意思了。小明:小意思,小意思。领导:你这人真有意思。"
        "小明:其实也没有别的意思。领导:那我就不好意思了。小明:是我不好意思。请问:以上意思分别是什么意思。",
        (
            "1-intention",
            "2-nothing-special",
            "3-token-gift",
            "4-not-generous",
            "5-trifle",
            "6-interesting",
            "7-no-other-intention",
            "8-leader-accepts",
            "9-xiaoming-sorry",
        ),
        read_seed5,
        False,
        drop_echo=False,
    ),
)
