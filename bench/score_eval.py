"""Agreement of the rubric (qrun.bench.score) with human labels, per split, question and category.

    python -m qrun.bench.score_eval tests/data/scorer/labelled.jsonl [--suite seed] [--failures tune]

Each line of the labelled file: {"id", "question_id", "answer", "label": 1 | 0.5 | 0, "category", "reason",
"split": "tune" | "heldout"} (see tests/data/scorer/README.md). An answer agrees when |score - label| <= 0.25.
`--failures` lists the disagreeing answers of one split; the rubric is tuned on "tune" only, so listing the
held-out failures while tuning would defeat the measurement.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from qrun.bench import suite as suites
from qrun.bench.score import score
from qrun.errors import QrunError

AGREEMENT_TOLERANCE = 0.25
SPLITS = ("tune", "heldout")


def load_labelled(path) -> list[dict]:
    rows = []
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            row = json.loads(line)
            if row.get("split") not in SPLITS or row.get("label") not in (0, 0.5, 1):
                raise ValueError(f"{path}, line {lineno}: needs split tune|heldout and label 0, 0.5 or 1")
            rows.append(row)
    return rows


def evaluate(rows: list[dict], suite) -> list[dict]:
    """Each row with its "score" and whether it "agrees" with its label."""
    out = []
    for row in rows:
        got = score(suite.question(row["question_id"]), row["answer"]).score
        out.append({**row, "score": got, "agrees": abs(got - row["label"]) <= AGREEMENT_TOLERANCE})
    return out


def agreement(evaluated: list[dict], split: str) -> tuple[int, int]:
    """(agreeing, total) over one split."""
    rows = [r for r in evaluated if r["split"] == split]
    return sum(r["agrees"] for r in rows), len(rows)


def _table(evaluated: list[dict], key: str) -> list[str]:
    cells: defaultdict[str, dict[str, list[int]]] = defaultdict(lambda: {s: [0, 0] for s in SPLITS})
    for r in evaluated:
        cell = cells[r[key]][r["split"]]
        cell[0] += r["agrees"]
        cell[1] += 1
    lines = [f"  {key:<14} " + "  ".join(f"{s:>12}" for s in SPLITS)]
    for name in sorted(cells):
        lines.append(f"  {name:<14} " + "  ".join(f"{cells[name][s][0]:>5}/{cells[name][s][1]:<6}" for s in SPLITS))
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qrun.bench.score_eval", description=__doc__.splitlines()[0])
    parser.add_argument("labelled")
    parser.add_argument("--suite", default="seed")
    parser.add_argument("--failures", choices=SPLITS, help="list the answers of this split that disagree")
    args = parser.parse_args(argv)
    try:
        evaluated = evaluate(load_labelled(args.labelled), suites.load(args.suite))
    except QrunError as err:
        print(f"Error: {err.one_line()}", file=sys.stderr)
        return 1
    except (OSError, UnicodeDecodeError, ValueError, KeyError) as err:  # JSONDecodeError is a ValueError
        print(
            f"Error: cannot read labelled answers {args.labelled}: {err} — give a JSONL file like "
            "tests/data/scorer/labelled.jsonl",
            file=sys.stderr,
        )
        return 1
    for split in SPLITS:
        agree, total = agreement(evaluated, split)
        print(
            f"{split:<8} agreement: {agree}/{total} = {100 * agree / total:.1f}% (|score - label| <= "
            f"{AGREEMENT_TOLERANCE})"
        )
    print(*_table(evaluated, "question_id"), sep="\n")
    print(*_table(evaluated, "category"), sep="\n")
    if args.failures:
        for r in evaluated:
            if r["split"] == args.failures and not r["agrees"]:
                print(
                    f"\n{r['id']} label {r['label']} score {r['score']:.2f} [{r['category']}] {r['reason']}\n  "
                    + r["answer"].replace("\n", "\n  ")
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
