"""Suite files: the built-in seed suite, and the errors a malformed or unknown suite gives."""

from __future__ import annotations

import json

import pytest

from qrun.bench import suite as suites
from qrun.errors import SuiteError

# The texts exactly as the report qrun replaces gave them (bench/suites/seed.json).
SEED_TEXTS = {
    "seed-1": "请说出以下两句话区别在哪里？1、冬天：能穿多少穿多少 2、夏天：能穿多少穿多少",
    "seed-2": "请说出以下两句话区别在哪里？单身狗产生的原因有两个，一是谁都看不上，二是谁都看不上",
    "seed-3": "他知道我知道你知道他不知道吗？这句话里，到底谁不知道",
    "seed-4": "明明明明明白白白喜欢他，可她就是不说。这句话里，明明和白白谁喜欢谁？",
    "seed-5": "领导：你这是什么意思？小明：没什么意思。意思意思。领导：你这就不够意思了。小明：小意思，小意思。"
    "领导：你这人真有意思。小明：其实也没有别的意思。领导：那我就不好意思了。小明：是我不好意思。"
    '请问：以上"意思"分别是什么意思。',
}


def test_seed_suite_has_the_issue_texts_exactly():
    seed = suites.load("seed")
    assert seed.name == "seed"
    assert {q.id: q.text for q in seed.questions} == SEED_TEXTS
    assert [q.id for q in seed.questions] == list(SEED_TEXTS)
    assert [len(q.rubric) for q in seed.questions] == [3, 3, 1, 2, 9]
    assert "seed" in suites.available()


def test_suite_by_path_and_question_lookup(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(
        json.dumps(
            {
                "name": "mine",
                "questions": [
                    {"id": "q1", "question": "1+1?", "rubric": [{"id": "two", "patterns": ["2", "re:\\btwo\\b"]}]}
                ],
            }
        )
    )
    mine = suites.load(str(path))
    assert mine.name == "mine" and mine.questions[0].rubric[0].weight == 1.0
    with pytest.raises(SuiteError, match="'q9' is not in suite 'mine'") as err:
        mine.question("q9")
    assert err.value.hint == "ids in this suite: q1"


def test_unknown_suite_lists_the_built_in_ones():
    with pytest.raises(SuiteError) as err:
        suites.load("nope")
    assert "unknown suite 'nope'" in err.value.message and "seed" in err.value.hint


GOOD_Q = {"id": "q1", "question": "?", "rubric": [{"id": "c1", "patterns": ["x"]}]}


def _write(tmp_path, text):
    path = tmp_path / "bad.json"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ({"id": "q2", "rubric": [{"id": "c", "patterns": ["x"]}]}, r'question 2 \(q2\): field "question"'),
        ({"id": "q2", "question": "?", "rubric": []}, r'question 2 \(q2\): field "rubric"'),
        (
            {"id": "q2", "question": "?", "rubric": [{"id": "c", "patterns": []}]},
            r'question 2 \(q2\), criterion 1 \(c\): field "patterns"',
        ),
        ({"id": "q2", "question": "?", "rubric": [{"id": "c", "weight": 0, "patterns": ["x"]}]}, r'field "weight"'),
        (
            {"id": "q2", "question": "?", "rubric": [{"id": "c", "patterns": ["re:(unclosed"]}]},
            r'field "patterns" item 1 is not a valid regular expression',
        ),
        (
            {"id": "q2", "question": "?", "rubric": [{"id": "c", "patterns": ["x"], "contradicts": ["re:a*"]}]},
            r'field "contradicts" item 1 matches the empty string',
        ),
        (
            {"id": "q1", "question": "?", "rubric": [{"id": "c", "patterns": ["x"]}]},
            r'question 2: field "id" duplicate',
        ),
    ],
)
def test_malformed_suite_names_file_line_question_and_field(tmp_path, question, expected):
    text = json.dumps({"name": "bad", "questions": [GOOD_Q, question]}, indent=2)
    path = _write(tmp_path, text)
    with pytest.raises(SuiteError, match=expected) as err:
        suites.load(str(path))
    message = err.value.message
    assert message.startswith(f"{path}, line ")
    line = int(message.split(", line ")[1].split(":")[0])
    assert line > 2  # points into the second question, not at the top of the file


def test_invalid_json_gives_line_and_column(tmp_path):
    path = _write(tmp_path, '{"name": "bad",\n "questions": [\n  {"id": "q1",}\n ]}')
    with pytest.raises(SuiteError, match=r"line 3, column \d+: invalid JSON"):
        suites.load(str(path))


@pytest.mark.parametrize(
    ("suite", "where", "valid"),
    [
        (
            {"name": "x", "question": [GOOD_Q], "questions": [GOOD_Q]},
            "top level has unknown field 'question'",
            "name, description, questions",
        ),
        (
            {"questions": [dict(GOOD_Q, refrence="2")]},
            "question 1 (q1) has unknown field 'refrence'",
            "id, question, reference, rubric",
        ),
        (
            {"questions": [dict(GOOD_Q, rubric=[{"id": "c1", "patterns": ["x"], "contradict": ["y"]}])]},
            "question 1 (q1), criterion 1 (c1) has unknown field 'contradict'",
            "id, description, weight, patterns, contradicts",
        ),
    ],
)
def test_unknown_keys_are_refused_at_every_level(tmp_path, suite, where, valid):
    path = _write(tmp_path, json.dumps(suite, indent=2))
    with pytest.raises(SuiteError) as err:
        suites.load(str(path))
    assert err.value.message.startswith(f"{path}, line ") and err.value.message.endswith(where)
    assert err.value.hint == f"valid fields here: {valid}"


def test_format_hint_points_at_the_installed_seed_suite(tmp_path):
    path = _write(tmp_path, json.dumps({"questions": []}))
    with pytest.raises(SuiteError) as err:
        suites.load(str(path))
    seed = suites.SUITES_DIR / "seed.json"
    assert seed.is_file() and str(seed) in err.value.hint
