"""Multiple-choice exams from a local folder in C-Eval's or CMMLU's CSV layout, or fetched through a hub's client.

Layouts (as the datasets ship them: the loading scripts of ceval/ceval-exam and haonan-li/cmmlu on Hugging Face read
the same files from their zips, ceval-exam.zip and cmmlu_v1_0_1.zip):

- C-Eval: folders dev/, val/, test/ holding `<subject>_<split>.csv` with columns id,question,A,B,C,D,answer and, in
  dev, explanation. The test split has no answer column (answers are graded on cevalbenchmark.com), so it cannot be
  scored here.
- CMMLU: folders dev/ and test/ holding `<subject>.csv`; its first column is pandas' unnamed index, then
  Question,A,B,C,D,Answer.

Every malformed file is one ExamError naming the file and the line: a missing column, an answer outside A-D, an
empty file, text that is not UTF-8, or a folder in neither layout.
"""

from __future__ import annotations

import csv
import errno
import io
import os
import re
import shutil
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from qrun import progress, settings
from qrun.convert import download as hub_download
from qrun.errors import DownloadError, QrunError, UsageError
from qrun.fsutil import os_reason, read_input_text, sha256_file

LETTERS = ("A", "B", "C", "D")
SOURCES = hub_download.SOURCES


class ExamError(QrunError):
    """An exam folder or CSV file that cannot be read as C-Eval or CMMLU."""


@dataclass(frozen=True)
class Suite:
    name: str
    title: str
    splits: tuple[str, ...]
    id_column: str  # "" is pandas' unnamed index column in CMMLU's files
    columns: tuple[str, ...]  # the question, the four options, the answer key
    hf_id: str
    modelscope_id: str
    default_split: str  # the split scored by default: the one with answers that is not dev

    def file_name(self, subject: str, split: str) -> str:
        return f"{subject}_{split}.csv" if self.name == "ceval" else f"{subject}.csv"

    def subject_of(self, file_name: str, split: str) -> str | None:
        suffix = f"_{split}.csv" if self.name == "ceval" else ".csv"
        return file_name[: -len(suffix)] if file_name.endswith(suffix) and len(file_name) > len(suffix) else None

    def layout(self) -> str:
        example = self.file_name("<subject>", "<split>")
        return f"{self.title}'s layout ({', '.join(s + '/' for s in self.splits)} holding {example})"


SUITES = {
    "ceval": Suite(
        name="ceval",
        title="C-Eval",
        splits=("dev", "val", "test"),
        id_column="id",
        columns=("question", "A", "B", "C", "D", "answer"),
        hf_id="ceval/ceval-exam",
        # ModelScope's copy of the same zip (opencompass's C-Eval guide downloads ceval-exam.zip from it)
        modelscope_id="opencompass/ceval-exam",
        default_split="val",
    ),
    "cmmlu": Suite(
        name="cmmlu",
        title="CMMLU",
        splits=("dev", "test"),
        id_column="",
        columns=("Question", "A", "B", "C", "D", "Answer"),
        hf_id="haonan-li/cmmlu",
        modelscope_id="opencompass/cmmlu",
        default_split="test",
    ),
}


@dataclass(frozen=True)
class Question:
    subject: str
    split: str
    id: str
    question: str
    options: tuple[str, str, str, str]
    answer: str | None  # one of LETTERS; None where the split has no answers (C-Eval's test)
    file: str
    line: int  # of the CSV record's last physical line (csv.reader's line_num)


def get_suite(name: str) -> Suite:
    try:
        return SUITES[name.lower()]
    except KeyError:
        raise UsageError(f"unknown exam suite {name!r}", f"use one of: {', '.join(SUITES)}") from None


def _fail(path: Path, where: str, problem: str, hint: str) -> ExamError:
    return ExamError(f"{path}{where}: {problem}", hint)


def read_csv(suite: Suite, path: Path, *, subject: str, split: str) -> list[Question]:
    """The questions of one CSV file.

    Raises:
        ExamError: unreadable, not UTF-8, empty, a missing column, or a row without its fields or with an answer
            outside A-D (naming the file and line).
    """
    fix = f"give a folder in {suite.layout()}, or re-download it"
    try:
        text = read_input_text(path, encoding="utf-8-sig")  # the datasets' files carry no BOM; Excel's copies do
    except UnicodeDecodeError as err:
        line = text_line(path, err.start)
        raise _fail(path, f", line {line}", f"not UTF-8 text (byte {err.start})", fix) from None
    except OSError as err:
        raise _fail(path, "", f"cannot read it: {os_reason(err)}", fix) from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None or not any(cell.strip() for cell in header):
            raise _fail(path, "", "the file is empty (no header row)", fix)
        names = [cell.strip() for cell in header]
        wanted = (suite.id_column, *suite.columns) if suite.name == "ceval" else suite.columns
        has_answers = not (suite.name == "ceval" and split == "test")
        missing = [c for c in wanted if c not in names and (has_answers or c != suite.columns[-1])]
        if missing:
            other = next(
                (o for o in SUITES.values() if o is not suite and all(c in names for c in o.columns[:-1])), None
            )
            if other is not None:  # the other dataset's files: the suite name is what is wrong
                raise _fail(
                    path,
                    ", line 1",
                    f"{other.title}'s columns, not {suite.title}'s",
                    f"run `qrun eval {other.name}` on this folder",
                )
            raise _fail(
                path,
                ", line 1",
                f"no column {', '.join(repr(m) for m in missing)} (the header is {','.join(names)})",
                f"{suite.title}'s files have columns {','.join((suite.id_column, *suite.columns))}",
            )
        repeated = sorted({c for c in wanted if names.count(c) > 1})
        if repeated:  # which of the two holds the question is anyone's guess
            raise _fail(path, ", line 1", f"the header names {', '.join(map(repr, repeated))} twice", fix)
        # CMMLU's id column is the unnamed one (""); a copy saved without it numbers its rows instead
        where = {name: names.index(name) for name in (suite.id_column, *suite.columns) if name in names}
        questions: list[Question] = []
        first_line: dict[str, int] = {}
        for row_number, row in enumerate(reader, start=1):
            if not any(cell.strip() for cell in row):
                continue  # a blank line at the end of a hand-edited file
            need = max(where.values())
            if len(row) <= need:
                raise _fail(path, f", line {reader.line_num}", f"row {row_number} has {len(row)} fields", fix)
            q_col, *option_cols, a_col = suite.columns
            if not row[where[q_col]].strip():  # an empty question scores the letters' prior, not knowledge
                raise _fail(path, f", line {reader.line_num}", f"row {row_number} has no question text", fix)
            answer = None
            if a_col in where:
                answer = row[where[a_col]].strip()
                if answer not in LETTERS:
                    raise _fail(
                        path,
                        f", line {reader.line_num}",
                        f"row {row_number}'s answer is {answer!r}, not one of A, B, C, D",
                        "fix that row or remove it",
                    )
            qid = row[where[suite.id_column]].strip() if suite.id_column in where else ""
            if qid and qid in first_line:
                # the id keys the question's prompt and its resume record: a repeat would score one question twice
                raise _fail(
                    path,
                    f", line {reader.line_num}",
                    f"row {row_number} repeats id {qid!r} of line {first_line[qid]}",
                    "give each row its own id",
                )
            if qid:
                first_line[qid] = reader.line_num
            questions.append(
                Question(
                    subject=subject,
                    split=split,
                    id=qid or str(row_number - 1),
                    question=row[where[q_col]],
                    options=(
                        row[where[option_cols[0]]],
                        row[where[option_cols[1]]],
                        row[where[option_cols[2]]],
                        row[where[option_cols[3]]],
                    ),
                    answer=answer,
                    file=str(path),
                    line=reader.line_num,
                )
            )
    except csv.Error as err:
        raise _fail(path, f", line {reader.line_num}", f"not CSV ({err})", fix) from None
    if not questions:
        raise _fail(path, "", "the file has a header but no questions", fix)
    return questions


def text_line(path: Path, byte_offset: int) -> int:
    """The 1-based line holding a byte offset of a file."""
    with open(path, "rb") as f:
        return f.read(byte_offset).count(b"\n") + 1


def find_root(suite: Suite, folder: Path) -> Path | None:
    """The folder holding the suite's split folders: `folder` itself or one level down (a zip's top folder)."""
    for candidate in [folder, *sorted(p for p in folder.iterdir() if p.is_dir())] if folder.is_dir() else []:
        if all((candidate / s).is_dir() for s in ("dev", suite.splits[1])):
            return candidate
    return None


def subjects_in(suite: Suite, root: Path, split: str) -> list[str]:
    folder = root / split
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix == ".csv") if folder.is_dir() else []
    subjects = [s for s in (suite.subject_of(n, split) for n in names) if s]
    if not subjects:
        raise ExamError(
            f"{folder} has no {suite.file_name('<subject>', split)} files",
            f"give a folder in {suite.layout()}",
        )
    return subjects


def load(
    suite: Suite, folder: str | os.PathLike, *, split: str, subjects: list[str] | None = None
) -> dict[str, list[Question]]:
    """{subject: questions} of one split from a folder in the suite's layout, subjects in name order.

    Raises:
        UsageError: an unknown split, a split without answers, or a subject not in the folder.
        ExamError: the folder is not in the suite's layout, or a file in it is malformed.
    """
    if split not in suite.splits:
        raise UsageError(f"{suite.title} has no split {split!r}", f"use one of: {', '.join(suite.splits)}")
    if suite.name == "ceval" and split == "test":
        raise UsageError(
            "C-Eval's test split has no answers (they are graded on cevalbenchmark.com)", "use --split val"
        )
    folder = Path(folder)
    if not folder.is_dir():
        raise ExamError(f"{folder} is not a folder", f"give --data a folder in {suite.layout()}")
    root = find_root(suite, folder)
    if root is None:
        raise ExamError(f"{folder} is not in {suite.layout()}", "give --data the folder holding those")
    available = subjects_in(suite, root, split)
    chosen = subjects or available
    unknown = [s for s in chosen if s not in available]
    if unknown:
        raise UsageError(
            f"no subject {', '.join(unknown)} in {root / split}",
            f"subjects there: {', '.join(available[:12])}{', ...' if len(available) > 12 else ''}",
        )
    return {
        s: read_csv(suite, root / split / suite.file_name(s, split), subject=s, split=split) for s in sorted(chosen)
    }


def dev_examples(suite: Suite, folder: str | os.PathLike, subject: str, k: int) -> list[Question]:
    """The first k dev questions of a subject (for --shots).

    Raises:
        ExamError: no dev file for the subject, fewer than k questions in it, or a malformed file.
    """
    if k == 0:
        return []
    root = find_root(suite, Path(folder))
    if root is None:
        raise ExamError(f"{folder} is not in {suite.layout()}", "give --data the folder holding those")
    path = root / "dev" / suite.file_name(subject, "dev")
    if not path.is_file():
        raise ExamError(f"{path} is missing: --shots takes its examples from it", "add it, or use --shots 0")
    examples = read_csv(suite, path, subject=subject, split="dev")
    if len(examples) < k:
        raise UsageError(
            f"{path} has {len(examples)} questions, fewer than --shots {k}", f"use --shots {len(examples)}"
        )
    return examples[:k]


# -- download ----------------------------------------------------------------------------------------------------
# The repos hold the CSVs in one zip (and, on Hugging Face, Parquet copies that qrun does not read).
DATA_PATTERNS = ["*.zip", "*.csv"]


def _snapshot(source: str, repo_id: str, *, revision: str | None, cache_dir, local_only: bool) -> str:
    if source == "hf":
        import huggingface_hub

        return huggingface_hub.snapshot_download(
            repo_id,
            repo_type="dataset",
            revision=revision,
            allow_patterns=DATA_PATTERNS,
            cache_dir=cache_dir,
            local_files_only=local_only,
        )
    from modelscope.hub.snapshot_download import snapshot_download

    return snapshot_download(
        repo_id,
        repo_type="dataset",
        revision=revision,
        allow_patterns=DATA_PATTERNS,
        cache_dir=cache_dir,
        local_files_only=local_only,
    )


def download(
    suite: Suite,
    *,
    source: str = "modelscope",
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_only: bool | None = None,
) -> Path:
    """Fetch a suite through the hub's own client (its cache, resume and offline mode) and return a folder in the
    suite's layout: the snapshot itself, or its zip extracted once under QRUN_HOME/exams.

    Args:
        source: "modelscope" or "hf".
        local_only: resolve from the hub client's cache only; None = QRUN_OFFLINE (HF_HUB_OFFLINE also works for hf)
            or a hub that accepts no connection within convert.download.PROBE_TIMEOUT_S.

    Raises:
        UsageError: unknown source.
        DownloadError: the hub client failed (network, missing repo or revision), or nothing is cached offline
            (one line naming QRUN_OFFLINE).
        ExamError: the snapshot holds neither the layout nor a zip with it.
    """
    if source not in SOURCES:
        raise UsageError(f"unknown source {source!r}", f"use one of: {', '.join(SOURCES)}")
    repo_id = suite.modelscope_id if source == "modelscope" else suite.hf_id
    hub = "ModelScope" if source == "modelscope" else "Hugging Face"
    where = f"{suite.title} ({repo_id}) from {hub}"
    print(f"[download] {where}", file=sys.stderr, flush=True)
    # the same offline rule and reachability probe as `qrun convert`: ModelScope's client otherwise retries an
    # unreachable hub for ~20 s, printing a warning per retry, before it fails
    access = hub_download.hub_access(source, local_only)
    local_copy = "give --data DIR with the CSV files"

    def snapshot(cache_only: bool) -> Path:
        with progress.plain_hub_bars():  # the hub's own bars; whole lines when stderr is a log
            return Path(_snapshot(source, repo_id, revision=revision, cache_dir=cache_dir, local_only=cache_only))

    try:
        folder = snapshot(access.local_only)
    except Exception as exc:  # any failure of the hub library: network, missing repo or revision, not cached
        if access.local_only:
            raise access.not_cached(where, local_copy) from exc
        cached = _cached_snapshot(suite, snapshot) if source == "modelscope" else None  # hf falls back by itself
        if cached is None:
            raise DownloadError(
                f"could not download {where}: {hub_download.hub_error_summary(exc)}",
                f"check the network and the dataset id/revision, or {local_copy}, or try {access.other_source}",
            ) from exc
        print(
            f"[download] {hub} failed ({hub_download.hub_error_summary(exc)}); using the cached copy {cached}",
            file=sys.stderr,
            flush=True,
        )
        folder = cached
    if access.unreachable is not None:
        print(
            f"[download] {hub} unreachable ({access.unreachable}); using the cached copy {folder}",
            file=sys.stderr,
            flush=True,
        )
    if find_root(suite, folder) is not None:
        return folder
    zips = sorted(folder.rglob("*.zip"))
    if not zips:
        raise ExamError(
            f"the {hub} snapshot {folder} holds no CSV files and no zip", f"give --data DIR in {suite.layout()}"
        )
    return extract(suite, zips[0])


def _cached_snapshot(suite: Suite, snapshot) -> Path | None:
    """ModelScope's cached copy of a dataset after an online failure (its client, unlike Hugging Face's, does not
    fall back to the cache), when it holds the layout or a zip."""
    try:
        folder = snapshot(True)
    except Exception:
        return None
    return folder if find_root(suite, folder) is not None or any(folder.rglob("*.zip")) else None


def extract(suite: Suite, zip_path: Path) -> Path:
    """Unpack a dataset zip once into QRUN_HOME/exams/<suite>/<sha256 prefix>, atomically (a partial folder is
    renamed into place), and return the folder in the suite's layout.

    Raises:
        ExamError: not a zip, or no layout inside it.
    """
    target = settings.qrun_home() / "exams" / suite.name / sha256_file(zip_path)[:16]
    if not target.is_dir():
        partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            with zipfile.ZipFile(zip_path) as archive:
                for member in archive.infolist():
                    name = Path(member.filename)
                    # only CSVs, and never outside the folder (an absolute or ../ name in a zip)
                    if member.is_dir() or name.suffix != ".csv" or name.is_absolute() or ".." in name.parts:
                        continue
                    (partial / name).parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(member) as src, open(partial / name, "wb") as dst:
                        shutil.copyfileobj(src, dst)
            os.replace(partial, target)
        except zipfile.BadZipFile as err:
            raise ExamError(
                f"{zip_path} is not a zip file ({err})", "delete it from the hub cache and download again"
            ) from None
        except OSError as err:
            if err.errno in (errno.ENOTEMPTY, errno.EEXIST) and target.is_dir():
                pass  # another run extracted the same zip first: its copy is the same bytes
            else:
                raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    root = find_root(suite, target)
    if root is None:
        raise ExamError(f"{zip_path} holds no folder in {suite.layout()}", "check the dataset id and revision")
    return root


def subject_title(root: Path | None, subject: str) -> str:
    """A subject's name for the prompt: from C-Eval's subject_mapping.json when the folder has one
    ({"computer_network": ["Computer Network", "计算机网络", "STEM"], ...}: the Chinese name), else the file's
    subject name with spaces."""
    mapping = _subject_mapping(root) if root is not None else {}
    entry = mapping.get(subject)
    if isinstance(entry, list) and len(entry) > 1 and isinstance(entry[1], str) and entry[1].strip():
        return entry[1].strip()
    return re.sub(r"_+", " ", subject)


_MAPPINGS: dict[Path, dict] = {}


def _subject_mapping(root: Path) -> dict:
    if root not in _MAPPINGS:
        import json

        mapping: dict = {}
        for path in (root / "subject_mapping.json", root.parent / "subject_mapping.json"):
            if path.is_file():
                try:
                    loaded = json.loads(path.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    loaded = {}
                mapping = loaded if isinstance(loaded, dict) else {}
                break
        _MAPPINGS[root] = mapping
    return _MAPPINGS[root]
