"""`qrun quality` on the tiny real-vocabulary models: the KL, agreement and log-likelihoods it reports are checked
against an independent numpy computation (the numpy reference forward of tests/reference_forward.py for the F16
reference, Engine.logits for the quant), the reference against itself gives KL 0, Q8_0 moves the distribution less
than Q4_0, the reference cache is reused and invalidated, and bad input is one line with nothing written.

The tiny models have random weights: their next-token distributions are nearly flat (perplexity of the order of
the vocabulary), so the KL values are small; what is compared is exact arithmetic, not model quality.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import reference_forward as rf
from qrun.bench import quality, quality_ref
from qrun.cli import main
from qrun.fsutil import sha256_file
from qrun.runner.engine import Engine
from tiny_models import MODELS

DEEPSEEK = "deepseek-llm-7b-chat"
CTX = 64  # windows of 64 tokens: 31 scored per window (positions 32..62 predict tokens 33..63)
TOP_K = 8
# The start of section three of the packaged text (a technical explanation): 200-230 tokens, 3 windows of CTX.
TEXT = quality.load_text(None)[1].split("三、什么是量化", 1)[1].split("四、", 1)[0][:330]


def ggufs_folder(tiny_gguf, folder: Path, model: str, quants=("F16", "Q8_0", "Q4_0")) -> Path:
    """A ggufs folder holding links to the session's tiny GGUFs (the originals are shared: never written)."""
    folder.mkdir(parents=True, exist_ok=True)
    for quant in quants:
        (folder / f"{model}-{quant}.gguf").symlink_to(tiny_gguf(model, quant))
    return folder


@pytest.fixture(scope="module")
def runs(tiny_gguf, tmp_path_factory):
    """Factory: model -> (quality document of F16 itself, Q8_0 and Q4_0 against F16 on TEXT, ggufs folder, text
    file), one run per model."""
    cache = {}

    def get(model):
        if model not in cache:
            root = tmp_path_factory.mktemp(f"quality-{model}")
            folder = ggufs_folder(tiny_gguf, root / "ggufs", model)
            text = root / "text.txt"
            text.write_text(TEXT, encoding="utf-8")
            doc = quality.quality(
                model,
                quants=["F16", "Q8_0", "Q4_0"],
                ref="F16",
                text=text,
                ctx=CTX,
                top_k=TOP_K,
                ggufs_dir=folder,
                out_dir=root / "out",
                threads=2,
            )
            cache[model] = (doc, folder, text)
        return cache[model]

    return get


def by_quant(doc: dict) -> dict[str, dict]:
    return {r["quant"]: r for r in doc["results"]}


# -- an independent computation of the same numbers ----------------------------------------------------------
def numpy_log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    top = x.max(axis=1, keepdims=True)
    return x - top - np.log(np.exp(x - top).sum(axis=1, keepdims=True))


def numpy_topk_kl(ref_lp: np.ndarray, quant_lp: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(KL over the reference's top k + one bucket for the rest, full-vocabulary KL) per row, written directly
    from the definitions with a full sort (quality_ref uses a partial one)."""
    top = np.argsort(-ref_lp, axis=1, kind="stable")[:, :k]
    rows = np.arange(len(ref_lp))[:, None]
    p_ref, p_quant = np.exp(ref_lp), np.exp(quant_lp)
    in_top = np.zeros(ref_lp.shape, dtype=bool)
    in_top[rows, top] = True
    rest_ref = np.where(in_top, 0.0, p_ref).sum(axis=1)
    rest_quant = np.where(in_top, 0.0, p_quant).sum(axis=1)
    kl_top = (p_ref[rows, top] * (ref_lp[rows, top] - quant_lp[rows, top])).sum(axis=1)
    kl_top += rest_ref * (np.log(rest_ref) - np.log(rest_quant))
    kl_full = (p_ref * (ref_lp - quant_lp)).sum(axis=1)
    return kl_top, kl_full


def expected(model, doc, folder, *, ref_logits_of) -> dict:
    """Per-window KL mean, agreement and both log-likelihoods of Q4_0, computed here with numpy."""
    with Engine.load(folder / f"{model}-F16.gguf", n_ctx=256, n_threads=2, vocab_only=True) as vocab:
        tokens = vocab.tokenize(TEXT)
    assert len(tokens) == doc["text"]["tokens"]
    first = CTX // 2
    out: dict = {"kl": [], "kl_full": [], "agree": [], "loglik": [], "ref_loglik": []}
    with Engine.load(folder / f"{model}-Q4_0.gguf", n_ctx=256, n_threads=2) as q4:
        for start in range(0, len(tokens) - CTX + 1, CTX):
            window = tokens[start : start + CTX]
            ref_lp = numpy_log_softmax(ref_logits_of(window[:-1])[first:])
            quant_lp = numpy_log_softmax(q4.logits(window[:-1])[first:])
            targets = np.array(window[first + 1 :])
            kl_top, kl_full = numpy_topk_kl(ref_lp, quant_lp, TOP_K)
            rows = np.arange(len(targets))
            out["kl"].append(kl_top.mean())
            out["kl_full"].append(kl_full)
            out["agree"].append((quant_lp.argmax(axis=1) == ref_lp.argmax(axis=1)).mean())
            out["loglik"].append(quant_lp[rows, targets].sum())
            out["ref_loglik"].append(ref_lp[rows, targets].sum())
            out.setdefault("kl_tokens", []).append(kl_top)
            out.setdefault("top_k_mass", []).append(np.sort(np.exp(ref_lp), axis=1)[:, -TOP_K:].sum(axis=1))
    return out


def _checked_models():
    """Every tiny model; Qwen's and ChatGLM3's are slow (each builds two more quantized GGUFs of a large
    vocabulary: ~30-50 s on 2 busy CPUs)."""
    return [pytest.param(m, marks=[] if m == DEEPSEEK else [pytest.mark.slow]) for m in MODELS]


@pytest.mark.parametrize("model", _checked_models())
def test_kl_matches_numpy_from_the_reference_forward(model, runs, tiny_checkpoints):
    """The reference is the numpy forward pass of the checkpoint (f16-rounded weights, as the F16 GGUF stores),
    the quant is llama.cpp's Q4_0: qrun's figures, computed from llama.cpp's F16 logits, agree within 5 % of the KL
    itself (measured: 1 %; the KL is ~1e-4 here, so a bare 1e-3 bound would hold for any figure near it); the
    full-vocabulary KL is never below the top-k one."""
    doc, folder, _ = runs(model)
    config, weights = rf.load_checkpoint(tiny_checkpoints[model])
    weights = rf.round_matrices_to_f16(weights)
    want = expected(model, doc, folder, ref_logits_of=lambda ids: rf.logits_from_weights(config, weights, ids))
    got = by_quant(doc)["Q4_0"]
    assert len(got["chunks"]) == len(want["kl"]) >= 3
    for chunk, kl in zip(got["chunks"], want["kl"], strict=True):
        assert chunk["kl_mean"] == pytest.approx(kl, abs=1e-9, rel=0.05)
    assert got["kl_mean"] == pytest.approx(np.mean(want["kl"]), abs=1e-9, rel=0.05)
    assert got["kl_mean"] > 0
    for kl_top, kl_full in zip(want["kl_tokens"], want["kl_full"], strict=True):
        assert (kl_full >= kl_top - 1e-9).all()
    assert np.concatenate(want["kl_full"]).mean() > np.mean(want["kl"])


@pytest.mark.parametrize("model", _checked_models())
def test_figures_match_numpy_from_the_same_logits_exactly(model, runs):
    """With the reference's own llama.cpp logits (Engine.logits of the F16 GGUF) every figure matches to float
    precision: the windows, top-k bookkeeping, rest bucket, agreement and log-likelihoods."""
    doc, folder, _ = runs(model)
    with Engine.load(folder / f"{model}-F16.gguf", n_ctx=256, n_threads=2) as f16:
        want = expected(model, doc, folder, ref_logits_of=f16.logits)
    got = by_quant(doc)["Q4_0"]
    for i, chunk in enumerate(got["chunks"]):
        assert chunk["tokens"] == CTX - 1 - CTX // 2
        assert chunk["kl_mean"] == pytest.approx(want["kl"][i], rel=1e-4, abs=1e-9)
        assert chunk["top1_agreement"] == pytest.approx(want["agree"][i])
        assert chunk["loglik"] == pytest.approx(want["loglik"][i], rel=1e-6)
        assert chunk["ref_loglik"] == pytest.approx(want["ref_loglik"][i], rel=1e-6)
    kl_tokens = np.concatenate(want["kl_tokens"])
    assert doc["reference"]["top_k_mass_mean"] == pytest.approx(np.concatenate(want["top_k_mass"]).mean(), rel=1e-5)
    assert got["kl_median"] == pytest.approx(np.median(kl_tokens), rel=1e-4)
    assert got["kl_p99"] == pytest.approx(np.percentile(kl_tokens, 99), rel=1e-4)
    n = sum(c["tokens"] for c in got["chunks"])
    assert got["ppl"] == pytest.approx(np.exp(-np.sum(want["loglik"]) / n), rel=1e-6)
    assert got["ref_ppl"] == pytest.approx(np.exp(-np.sum(want["ref_loglik"]) / n), rel=1e-6)


@pytest.mark.parametrize("model", _checked_models())
def test_reference_against_itself_and_q8_below_q4(model, runs):
    doc, folder, _ = runs(model)
    results = by_quant(doc)
    itself = results["F16"]
    assert itself["kl_mean"] == pytest.approx(0, abs=1e-7) and itself["kl_p99"] == pytest.approx(0, abs=1e-7)
    assert itself["top1_agreement"] == 1.0
    assert itself["ppl"] == pytest.approx(itself["ref_ppl"], rel=1e-6)
    assert 0 < results["Q8_0"]["kl_mean"] < results["Q4_0"]["kl_mean"]
    assert results["Q8_0"]["top1_agreement"] >= results["Q4_0"]["top1_agreement"]
    for quant, result in results.items():  # the document the report merge reads
        path = folder / f"{model}-{quant}.gguf"
        assert result["gguf_sha256"] == sha256_file(path) and result["size_bytes"] == path.stat().st_size
    assert doc["reference"]["gguf_sha256"] == sha256_file(folder / f"{model}-F16.gguf")
    on_disk = json.loads(Path(doc["results_path"]).read_text(encoding="utf-8"))
    assert on_disk["kind"] == "qrun-quality" and on_disk["schema"] == 1 and on_disk["results"] == doc["results"]


# -- the cache and the results file --------------------------------------------------------------------------
def run_cli(*args) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["quality", *map(str, args)])
    return result.exit_code, result.stdout, result.stderr


def test_reference_cache_is_reused_and_invalidated(tiny_gguf, tmp_path):
    folder = ggufs_folder(tiny_gguf, tmp_path / "ggufs", DEEPSEEK, quants=("F16", "Q4_0", "Q8_0"))
    text = tmp_path / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "out"
    base = [DEEPSEEK, "--ggufs", folder, "--text", text, "--ctx", CTX, "--top-k", TOP_K, "--out", out, "--threads", 2]

    def run(*extra) -> dict:
        code, stdout, stderr = run_cli(*base, *extra, "--json")
        assert code == 0, stderr
        return json.loads(stdout)

    # another model's results in the same folder are its own file: untouched, and no reason to refuse
    other = out / "quality-qwen-7b-chat.json"
    out.mkdir()
    other.write_text(json.dumps({"kind": "qrun-quality", "schema": 1, "model": "qwen-7b-chat", "results": []}) + "\n")
    other_bytes = other.read_bytes()
    first = run("--quants", "Q4_0")
    results = out / f"quality-{DEEPSEEK}.json"
    assert first["results_path"] == str(results) and not (out / "quality.json").exists()
    cache_files = sorted((tmp_path / "qrun-home" / "quality-cache").glob("*.npz"))
    assert first["reference"]["cached"] is False and len(cache_files) == 1
    cache_bytes = cache_files[0].read_bytes()
    second = run("--quants", "Q8_0")
    assert second["reference"]["cached"] is True and cache_files[0].read_bytes() == cache_bytes
    # the second run's quant joins the first's in quality-<model>.json: same reference, text, ctx and top-k
    assert [r["quant"] for r in second["results"]] == ["Q8_0", "Q4_0"]
    assert second["results"][1] == first["results"][0]

    text.write_text(TEXT + "\n江水向东流。", encoding="utf-8")
    code, _, stderr = run_cli(*base, "--quants", "Q4_0")  # the file holds results for the old text: kept
    assert code == 1 and "--force to replace them" in stderr, stderr
    assert json.loads(results.read_text(encoding="utf-8"))["results"] == second["results"]
    # an unreadable .resume file (a disk that failed mid-write) is not trusted: every window is computed
    key = quality_ref.cache_key(
        gguf_sha256=sha256_file(folder / f"{DEEPSEEK}-F16.gguf"),
        text_sha256=hashlib.sha256(quality.load_text(text)[1].encode()).hexdigest(),
        ctx=CTX,
        top_k=TOP_K,
    )
    new_cache = quality_ref.cache_path(cache_files[0].parent, key, label=f"{DEEPSEEK}-F16")
    resume = quality_ref.resume_path(new_cache)
    resume.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    third = run("--quants", "Q4_0", "--force")
    assert third["reference"]["cached"] is False and [r["quant"] for r in third["results"]] == ["Q4_0"]
    assert third["reference"]["windows_resumed"] == 0 and not resume.exists() and new_cache.is_file()
    assert len(list((tmp_path / "qrun-home" / "quality-cache").glob("*.npz"))) == 2
    assert cache_files[0].read_bytes() == cache_bytes
    table_code, table, _ = run_cli(*base, "--quants", "Q4_0")
    assert table_code == 0 and "(cached)" in table and "Q4_0" in table and str(results) in table
    assert other.read_bytes() == other_bytes
    assert f"top {TOP_K} tokens hold {100 * third['reference']['top_k_mass_mean']:.1f} %" in table


def test_default_reference_is_bf16_when_converted(tiny_gguf, tiny_checkpoints, tmp_path):
    from qrun.convert.pipeline import convert_model

    folder = ggufs_folder(tiny_gguf, tmp_path / "ggufs", DEEPSEEK, quants=("F16",))
    convert_model(DEEPSEEK, from_dir=tiny_checkpoints[DEEPSEEK], quant="BF16", out_dir=folder, threads=2)
    text = tmp_path / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    doc = quality.quality(DEEPSEEK, text=text, ctx=CTX, top_k=TOP_K, ggufs_dir=folder, out_dir=tmp_path / "out")
    assert doc["reference"]["quant"] == "BF16" and [r["quant"] for r in doc["results"]] == ["F16"]
    # F16 and BF16 round the same weights differently: a small KL, not none
    assert 0 < doc["results"][0]["kl_mean"] < 1e-3


# -- bad input: one line, nothing written, earlier outputs kept ----------------------------------------------
def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def bad_input_setup(tiny_gguf, tmp_path_factory):
    root = tmp_path_factory.mktemp("quality-bad")
    ggufs_folder(tiny_gguf, root / "ggufs", DEEPSEEK, quants=("F16", "Q4_0"))
    text = root / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    (root / "latin1.txt").write_bytes("江水".encode() + b"\xe9t\xe9" * 50)
    (root / "short.txt").write_text("你好", encoding="utf-8")
    (root / "no-ref").mkdir()
    (root / "no-ref" / f"{DEEPSEEK}-Q4_0.gguf").symlink_to(tiny_gguf(DEEPSEEK, "Q4_0"))
    return root


BAD = {
    "unknown model": (["--as-model", "gpt-5"], "unknown model 'gpt-5'"),
    "unknown quant": (["--quants", "Q4_0,Q3_X"], "unknown --quant 'Q3_X'"),
    "missing quant": (["--quants", "Q8_0"], "not converted to Q8_0"),
    "missing --ref": (["--ref", "BF16"], "not converted to BF16"),
    "no reference at all": (["--ggufs", "{root}/no-ref"], "no unquantized GGUF"),
    "text too short": (["--text", "{root}/short.txt"], "fewer than one --ctx window of 64"),
    "ctx above the model's": (["--ctx", "100000"], "more than the 4096 tokens"),
    "ctx too small": (["--ctx", "4"], "--ctx must be at least 8"),
    "top-k zero": (["--top-k", "0"], "--top-k must be from 1"),
    "missing text": (["--text", "{root}/nothing.txt"], "cannot read --text"),
    "text is a folder": (["--text", "{root}/no-ref"], "cannot read --text"),
    "text not UTF-8": (["--text", "{root}/latin1.txt"], "is not UTF-8 text"),
    "unknown option": (["--temperature", "0"], "No such option"),
    "results of another setup": (["--out", "{root}/other-out"], f"holds results of {DEEPSEEK} for another"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_writes_nothing(case, bad_input_setup, tmp_path):
    root = bad_input_setup
    args, needle = BAD[case]
    args = [a.format(root=root) for a in args]
    out = root / "out" if "--out" not in args else Path(args[args.index("--out") + 1])
    out.mkdir(parents=True, exist_ok=True)
    # this model's results of another setup (no reference, text, ctx or top-k recorded): refused unless --force
    earlier = out / f"quality-{DEEPSEEK}.json"
    earlier.write_text(json.dumps({"kind": "qrun-quality", "schema": 1, "model": DEEPSEEK, "results": []}) + "\n")
    before = snapshot(out)
    defaults = {"--ggufs": str(root / "ggufs"), "--text": str(root / "text.txt"), "--ctx": str(CTX), "--out": str(out)}
    for flag, value in defaults.items():
        if flag not in args:
            args += [flag, value]
    model = DEEPSEEK
    if args[0] == "--as-model":  # the model argument itself is the bad input
        model, args = args[1], args[2:]
    code, stdout, stderr = run_cli(model, *args)
    assert code == 1, (code, stdout, stderr)
    assert stderr.startswith("Error: ") and stderr.count("\n") == 1 and needle in stderr, stderr
    assert stdout == ""
    assert snapshot(out) == before  # the earlier results byte for byte, no partial or lock file
    assert not (tmp_path / "qrun-home" / "quality-cache").exists() or not list(
        (tmp_path / "qrun-home" / "quality-cache").glob("*.npz")
    )


def test_ctrl_c_keeps_finished_windows_and_the_rerun_resumes_them(tiny_gguf, tmp_path):
    """SIGINT while the reference runs: exit 130, no cache, no results file, no temporary left, and the finished
    windows kept in the cache's .resume file; the rerun computes only the other windows. SIGINT again while the
    quant is scored: its finished windows are kept too, and the third run scores only the rest. The figures and
    the cache file equal, byte for byte, those of a run never interrupted."""
    import os
    import signal
    import subprocess
    import sys

    folder = ggufs_folder(tiny_gguf, tmp_path / "ggufs", DEEPSEEK, quants=("F16", "Q4_0"))
    text = tmp_path / "text.txt"  # about 800 tokens: 6 windows of 128, each 0.3-1 s on 2 busy CPUs
    text.write_text(quality.load_text(None)[1][:1150], encoding="utf-8")
    command = [sys.executable, "-c", "import sys; from qrun.cli import main; sys.argv[0] = 'qrun'; main()"]
    command += ["quality", DEEPSEEK, "--ggufs", str(folder), "--text", str(text), "--threads", "2", "--ctx", "128"]
    per_window = 128 - 1 - 64

    def env_of(name: str) -> dict[str, str]:
        return {**os.environ, "QRUN_HOME": str(tmp_path / name / "home")}

    def run(name: str) -> tuple[dict, str]:
        args = [*command, "--out", str(tmp_path / name / "out"), "--json"]
        proc = subprocess.run(args, capture_output=True, text=True, env=env_of(name), timeout=600)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout), proc.stderr

    def interrupt(at: str) -> list[str]:
        """Run until the stderr line that starts with `at`, send SIGINT; the lines seen before it."""
        proc = subprocess.Popen(
            [*command, "--out", str(out)], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env_of("cut")
        )
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:
            seen.append(line.rstrip("\n"))
            if line.startswith(at):
                proc.send_signal(signal.SIGINT)
                break
        rest = proc.stderr.read()
        assert proc.wait(timeout=60) == 130, rest
        assert rest.strip().splitlines()[-1] == "Interrupted."
        assert not list(cache.glob(".*.tmp")) and not list(out.glob("quality-*.json"))
        assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
        return seen

    def windows_of(lines: list[str], prefix: str) -> list[int]:
        return [int(line.rsplit(" ", 1)[1].split("/")[0]) for line in lines if line.startswith(prefix + ": window ")]

    out, cache = tmp_path / "cut" / "out", tmp_path / "cut" / "home" / "quality-cache"
    ref_lines, quant_lines = f"[quality] reference {DEEPSEEK}-F16.gguf", f"[quality] {DEEPSEEK}-Q4_0.gguf"

    seen = interrupt(f"{ref_lines}: window 3/")  # windows 1 and 2 are finished and kept
    n_windows = int(seen[-1].rsplit("/", 1)[1])
    assert n_windows >= 5, seen
    assert not list(cache.glob("*.npz"))
    (resume,) = cache.glob("*.npz.resume")
    with np.load(resume) as kept:
        kept_ids = kept["top_ids"]
    ref_kept = len(kept_ids) // per_window
    assert ref_kept >= 2 and len(kept_ids) == ref_kept * per_window

    seen = interrupt(f"{quant_lines}: window 3/")  # the reference finishes, then two windows of Q4_0
    assert windows_of(seen, ref_lines) == list(range(ref_kept + 1, n_windows + 1)), seen
    assert f"{ref_lines}: windows 1-{ref_kept} from an interrupted run, not computed again" in seen
    assert not resume.exists()
    (cache_file,) = cache.glob("*.npz")
    with np.load(cache_file) as final:
        assert np.array_equal(final["top_ids"][: len(kept_ids)], kept_ids)
    (scores,) = cache.glob("*.scores.resume")
    with np.load(scores) as kept:
        kept_kl = kept["kl"]
    quant_kept = len(kept_kl) // per_window
    assert quant_kept >= 2 and len(kept_kl) == quant_kept * per_window

    doc, stderr = run("cut")
    assert doc["reference"]["cached"] is True and doc["reference"]["windows_resumed"] == 0
    (result,) = doc["results"]
    assert result["quant"] == "Q4_0" and result.pop("windows_resumed") == quant_kept
    assert windows_of(stderr.splitlines(), quant_lines) == list(range(quant_kept + 1, n_windows + 1)), stderr
    assert not scores.exists()

    whole, _ = run("whole")
    assert whole["reference"]["windows_resumed"] == 0 and whole["results"][0].pop("windows_resumed") == 0
    assert (
        doc["results"] == whole["results"] and doc["scored_tokens"] == whole["scored_tokens"] == n_windows * per_window
    )
    assert cache_file.read_bytes() == (tmp_path / "whole" / "home" / "quality-cache" / cache_file.name).read_bytes()


def test_a_damaged_results_file_or_an_out_under_a_file_is_one_line(bad_input_setup, tmp_path):
    root = bad_input_setup
    common = ["--ggufs", str(root / "ggufs"), "--text", str(root / "text.txt"), "--ctx", str(CTX)]
    out = tmp_path / "out"
    out.mkdir()
    damaged = out / f"quality-{DEEPSEEK}.json"
    damaged.write_bytes(b'{"kind": "qrun-quality", "schema": 1, "resu')  # cut off mid-write by some other tool
    code, stdout, stderr = run_cli(DEEPSEEK, *common, "--out", str(out))
    assert code == 1 and stdout == "" and stderr.count("\n") == 1, stderr
    assert "is not a readable `qrun quality` results file" in stderr and "--force" in stderr, stderr
    assert damaged.read_bytes() == b'{"kind": "qrun-quality", "schema": 1, "resu'
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    code, stdout, stderr = run_cli(DEEPSEEK, *common, "--out", str(a_file / "sub"))
    assert code == 1 and stdout == "" and stderr.count("\n") == 1, stderr
    assert "--out folder" in stderr and "holds" not in stderr, stderr
    assert a_file.read_text() == "x"
