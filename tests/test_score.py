"""The rubric scorer on crafted right, wrong, partial and negated answers for every seed question, and its
measured agreement with the human-labelled answers in tests/data/scorer/labelled.jsonl."""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from qrun.bench import score as scoring
from qrun.bench import score_eval
from qrun.bench import suite as suites
from qrun.cli import main
from qrun.errors import SuiteError


@pytest.fixture(scope="module")
def seed():
    return {q.id: q for q in suites.load("seed").questions}


def judge(seed, qid, answer):
    result = scoring.score(seed[qid], answer)
    return result.score, {c.id: c.status for c in result.criteria}


# (question, answer, expected score, expected statuses of named criteria)
CASES = [
    # seed-1: winter wear more, summer wear less (+1 point for saying the same words flip meaning)
    (
        "seed-1",
        "冬天天气冷，能穿多少就穿多少，意思是越多越好；夏天炎热，穿得越少越好。同样的话在不同语境下意思完全相反。",
        1.0,
        {"winter-more": "matched", "summer-less": "matched", "same-words": "matched"},
    ),
    ("seed-1", "冬天要尽可能多穿衣服保暖，夏天则尽量少穿。", 0.8, {"same-words": "missing"}),
    ("seed-1", "冬天少穿，夏天多穿。", 0.0, {"winter-more": "contradicted", "summer-less": "contradicted"}),
    ("seed-1", "冬天：能穿多少穿多少 2、夏天：能穿多少穿多少", 0.0, {"winter-more": "missing"}),  # echo only
    ("seed-1", "In winter, wear as much as you can; in summer, wear as little as you can.", 0.8, {}),
    ("seed-1", "冬天不是少穿，而是多穿；夏天嘛，尽量少穿", 0.8, {"winter-more": "matched"}),
    # seed-2: the two readings, in either order; naming subject/object is the last point
    (
        "seed-2",
        "第一个是他自己看不上别人，第二个是别人看不上他。前者谁是宾语，后者谁是主语。",
        1.0,
        {"reading-looks-down-on-others": "matched", "reading-nobody-wants-them": "matched"},
    ),
    ("seed-2", "一是别人都看不上他，二是他看不上别人", 0.8, {"subject-vs-object": "missing"}),
    ("seed-2", "一个是眼光太高，另一个是没人看得上他。", 0.8, {}),
    ("seed-2", "眼光太高了。", 0.4, {"reading-nobody-wants-them": "missing"}),
    ("seed-2", "这两句话没有区别。", 0.0, {"reading-looks-down-on-others": "contradicted"}),
    ("seed-2", "看起来没有区别，但其实一是自己看不上别人，二是别人看不上自己。", 0.8, {}),
    # seed-3: 他 does not know
    ("seed-3", "他不知道。", 1.0, {"he-does-not-know": "matched"}),
    ("seed-3", "是最后那个“他”不知道。", 1.0, {}),
    ("seed-3", "我不知道。", 0.0, {"he-does-not-know": "contradicted"}),
    ("seed-3", "你不知道。", 0.0, {"he-does-not-know": "contradicted"}),
    ("seed-3", "他知道我知道你知道他不知道吗？这句话里，到底谁不知道", 0.0, {"he-does-not-know": "missing"}),  # echo
    ("seed-3", "不是我不知道，也不是你不知道，而是他不知道。", 1.0, {"he-does-not-know": "matched"}),
    ("seed-3", "并不是他不知道，是我不知道。", 0.0, {"he-does-not-know": "contradicted"}),
    ("seed-3", "He doesn't know.", 1.0, {}),
    # seed-4: 白白 likes 明明 (3) + 明明明白 parsed as 明明 understands (1)
    ("seed-4", "白白喜欢明明。", 0.75, {"baibai-likes-mingming": "matched", "mingming-understands": "missing"}),
    ("seed-4", "明明喜欢白白。", 0.0, {"baibai-likes-mingming": "contradicted"}),
    ("seed-4", "不是明明喜欢白白，而是白白喜欢明明。", 0.75, {"baibai-likes-mingming": "matched"}),
    ("seed-4", "不是明明喜欢白白而是白白喜欢明明", 0.75, {"baibai-likes-mingming": "matched"}),
    ("seed-4", "白白喜欢明明，而不是明明喜欢白白。", 0.75, {"baibai-likes-mingming": "matched"}),
    ("seed-4", "并不是白白喜欢明明。", 0.0, {"baibai-likes-mingming": "contradicted"}),
    ("seed-4", "是明明喜欢白白吗？不对，白白喜欢明明。", 0.75, {"baibai-likes-mingming": "matched"}),
    ("seed-4", "白白喜欢明明。所以说，明明喜欢白白。", 0.0, {"baibai-likes-mingming": "contradicted"}),
    ("seed-4", "明明很清楚，**白白**喜欢“明明”。", 1.0, {"mingming-understands": "matched"}),
    ("seed-4", "明明明明明白白白喜欢他，可她就是不说。", 0.0, {"baibai-likes-mingming": "missing"}),  # echo
    # seed-5: nine meanings, one point each
    (
        "seed-5",
        "1. 询问用意；2. 没什么特别的；3. 送点小礼物表示一下；4. 不够朋友；5. 微不足道；6. 有趣；"
        "7. 没有别的意图；8. 那我就收下了；9. 是我过意不去",
        1.0,
        {},
    ),
    (
        "seed-5",
        "第一个问用意，第三个是送礼，第六个是说这人有趣。",
        round(3 / 9, 4),
        {"1-intention": "matched", "3-token-gift": "matched", "6-interesting": "matched", "4-not-generous": "missing"},
    ),
    ("seed-5", "意思就是意思。", 0.0, {}),
]


@pytest.mark.parametrize(("qid", "answer", "expected", "statuses"), CASES)
def test_crafted_answers(seed, qid, answer, expected, statuses):
    got, criteria = judge(seed, qid, answer)
    assert got == pytest.approx(expected), criteria
    for cid, status in statuses.items():
        assert criteria[cid] == status, criteria


def test_result_shows_matched_and_contradicted_with_evidence(seed):
    result = scoring.score(seed["seed-4"], "明明心里很明白：不是明明喜欢白白，而是白白喜欢明明")
    assert result.matched == ["baibai-likes-mingming", "mingming-understands"]
    assert result.contradicted == []
    assert result.criteria[0].evidence == "白白喜欢明明"
    data = result.to_dict()
    assert data["matched"] == result.matched and data["source"] == "rubric"
    assert scoring.ScoreResult.from_dict(data).criteria == result.criteria


def test_normalize_and_clauses():
    assert scoring.normalize("**白白** 喜欢 “明明”，  OK！") == "白白喜欢明明, ok!"
    text = scoring.normalize("不是A而是B，真的吗？")
    parts = scoring.clauses(text)
    assert [text[c.start : c.end] for c in parts] == ["不是a", "而是b,", "真的吗?"]
    assert [c.question for c in parts] == [False, False, True]


def test_chinese_chars_counts_ideographs_only():
    assert scoring.chinese_chars("白白喜欢明明。OK, 42!") == 6


# -- qrun score -------------------------------------------------------------------------------------------------


def _answers(tmp_path, items):
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items), encoding="utf-8")
    return path


def test_qrun_score_json_in_input_order_with_verdicts(tmp_path):
    path = _answers(
        tmp_path,
        [
            {"question_id": "seed-4", "answer": "不是明明喜欢白白，而是白白喜欢明明", "model": "qwen-7b-chat"},
            {"question_id": "seed-3", "answer": "我不知道"},
            {"question_id": "seed-4", "answer": "明明喜欢白白", "model": "chatglm3"},
        ],
    )
    verdicts = tmp_path / "verdicts.csv"
    verdicts.write_text("model,question_id,score\nchatglm3-6b,seed-4,0.5\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["score", str(path), "--json", "--verdicts", str(verdicts)])
    assert result.exit_code == 0, result.output
    scored = json.loads(result.stdout)
    assert [(s["question_id"], s["score"], s["source"]) for s in scored] == [
        ("seed-4", 0.75, "rubric"),
        ("seed-3", 0.0, "rubric"),
        ("seed-4", 0.5, "verdict"),
    ]
    assert scored[0]["matched"] == ["baibai-likes-mingming"] and scored[1]["contradicted"] == ["he-does-not-know"]
    table = CliRunner().invoke(main, ["score", str(path)])
    assert table.exit_code == 0 and "mean score: 0.250 over 3 answers" in table.stdout


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("not json", "line 2: invalid JSON"),
        ('{"question_id": "seed-1"}', 'line 2: field "answer" missing'),
        ('{"question_id": "seed-9", "answer": "x"}', "line 2: question 'seed-9' is not in suite 'seed'"),
        ('["seed-1", "x"]', "line 2: expected a JSON object"),
    ],
)
def test_qrun_score_bad_line_names_its_number(tmp_path, line, expected):
    path = tmp_path / "answers.jsonl"
    path.write_text('{"question_id": "seed-1", "answer": "冬天多穿"}\n' + line + "\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["score", str(path)])
    assert result.exit_code == 1
    assert expected in result.output and result.output.startswith("Error: ")


def test_answers_file_with_a_bom_is_read_and_an_empty_one_refused(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text('\ufeff{"question_id": "seed-3", "answer": "我不知道"}\n', encoding="utf-8")
    assert [s["question_id"] for s in scoring.score_answers_file(path, suites.load("seed"))] == ["seed-3"]
    path.write_text("", encoding="utf-8")
    with pytest.raises(SuiteError, match=f"no answers in {path}"):
        scoring.score_answers_file(path, suites.load("seed"))


def test_bad_verdicts_file_names_the_line(tmp_path):
    verdicts = tmp_path / "v.csv"
    verdicts.write_text("qwen,seed-1,1\nqwen,seed-2,7\n", encoding="utf-8")
    with pytest.raises(SuiteError, match=r'line 2: field "score" must be a number from 0 to 1'):
        scoring.load_verdicts(verdicts)


# -- claims, not keywords --------------------------------------------------------------------------------------
# (question, answer, expected score, expected statuses): answers a keyword rubric gets wrong
CLAIM_CASES = [
    # the right words, the wrong claim
    (
        "seed-1",
        "冬天能穿多少穿多少，意思是少穿一点，因为有暖气；夏天能穿多少穿多少，意思是多穿一点防晒。",
        0.0,
        {"winter-more": "contradicted", "summer-less": "contradicted"},
    ),
    (
        "seed-2",
        "第一句“谁”是主语，表示别人都看不上他；第二句“谁”也是主语，意思相同。",
        0.0,
        {"reading-nobody-wants-them": "contradicted"},
    ),
    (
        "seed-4",
        "明明明白白白喜欢他，所以白白是被喜欢的人，明明喜欢白白。",
        0.0,
        {"baibai-likes-mingming": "contradicted"},
    ),
    (
        "seed-5",
        "1. 什么意思：送礼\n2. 没什么意思：有趣\n3. 意思意思：意图\n4. 不够意思：微不足道",
        0.0,
        {"1-intention": "contradicted", "3-token-gift": "contradicted"},
    ),
    # the right claim in other words
    (
        "seed-1",
        "天冷，衣服能往上加就往上加；天热，能脱就脱。",
        0.8,
        {"winter-more": "matched", "summer-less": "matched"},
    ),
    ("seed-2", "前者是我挑别人，后者是别人挑我——一个主动拒绝，一个被动被拒。", 1.0, {}),
    ("seed-3", "被蒙在鼓里的是他。", 1.0, {"he-does-not-know": "matched"}),
    ("seed-4", "动心的是白白，对象是明明。", 0.75, {"baibai-likes-mingming": "matched"}),
    ("seed-5", "意图；没什么；心意；不够朋友；微不足道；有趣；没别的意图；收下；抱歉。", 1.0, {}),
    # hedges and "both": half
    ("seed-3", "可能是他不知道，也可能是你不知道。", 0.5, {"he-does-not-know": "partial"}),
    ("seed-3", "是他不知道，也是我不知道，我们俩都不知道。", 0.5, {"he-does-not-know": "partial"}),
    ("seed-4", "明明和白白互相喜欢。", 0.375, {"baibai-likes-mingming": "partial"}),
    # saying both sides without a correction is a contradiction; with one, the correction counts
    ("seed-4", "答案是白白喜欢明明，也就是说明明对白白有好感。", 0.0, {"baibai-likes-mingming": "contradicted"}),
    ("seed-2", "第一个是他看不上别人，第二个是别人看不上他。所以两句话其实没有区别。", 0.0, {}),
    (
        "seed-4",
        "很多人以为是明明喜欢白白，其实不然，白白才是喜欢明明的那个人。",
        0.75,
        {"baibai-likes-mingming": "matched"},
    ),
    ("seed-1", "冬天不能少穿，夏天不能多穿。", 0.8, {"winter-more": "matched", "summer-less": "matched"}),
]


@pytest.mark.parametrize(("qid", "answer", "expected", "statuses"), CLAIM_CASES)
def test_claims_decide_the_score(seed, qid, answer, expected, statuses):
    got, criteria = judge(seed, qid, answer)
    assert got == pytest.approx(expected), criteria
    for cid, status in statuses.items():
        assert criteria[cid] == status, criteria


def test_an_edited_seed_rubric_is_scored_by_its_patterns(tmp_path):
    """The claim readers belong to the seed text and criterion ids; a suite that changes them gets its patterns."""
    raw = copy.deepcopy(suites.load("seed").raw)
    raw["questions"][0]["rubric"][0]["id"] = "winter-more-renamed"
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(raw, ensure_ascii=False), encoding="utf-8")
    edited = suites.load(str(path)).question("seed-1")
    answer = "天冷，衣服能往上加就往上加；天热，能脱就脱。"  # the readers' 0.8; the patterns know none of these words
    assert scoring.score(edited, answer).score == 0.0
    assert scoring.score(suites.load("seed").question("seed-1"), answer).score == 0.8


# -- agreement with human labels ---------------------------------------------------------------------------------
LABELLED = Path(__file__).parent / "data" / "scorer" / "labelled.jsonl"
HELD_OUT_GOAL = 0.95
CATEGORIES = {
    "plain-correct",
    "plain-wrong",
    "unusual-words",
    "reuses-words",
    "negation",
    "hedged",
    "partial",
    "english",
    "garbled",
    "contradiction",
}


def test_labelled_set_is_large_varied_and_split_by_its_hash():
    rows = score_eval.load_labelled(LABELLED)
    assert len(rows) >= 150 and len({r["id"] for r in rows}) == len(rows)
    per_question = Counter(r["question_id"] for r in rows)
    assert sorted(per_question) == [f"seed-{i}" for i in range(1, 6)] and min(per_question.values()) >= 30
    assert set(Counter(r["category"] for r in rows)) == CATEGORIES
    assert all(r["reason"].strip() for r in rows)
    for r in rows:  # the split is fixed by the text (tests/data/scorer/README.md), not chosen after scoring
        odd = hashlib.sha256(f"{r['question_id']}\n{r['answer']}".encode()).digest()[0] % 2
        assert r["split"] == ("heldout" if odd else "tune"), r["id"]


def test_scorer_meets_its_held_out_agreement():
    evaluated = score_eval.evaluate(score_eval.load_labelled(LABELLED), suites.load("seed"))
    agree, total = score_eval.agreement(evaluated, "heldout")
    # no list of the failing answers here: the rubric is tuned on the "tune" half only (see score_eval)
    assert agree / total >= HELD_OUT_GOAL, f"held-out agreement {agree}/{total} is below {HELD_OUT_GOAL:.0%}"


def test_score_eval_command_prints_both_halves():
    result = subprocess.run(
        [sys.executable, "-m", "qrun.bench.score_eval", str(LABELLED)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("tune     agreement: ") and lines[1].startswith("heldout  agreement: ")
    assert "seed-5" in result.stdout and "contradiction" in result.stdout
