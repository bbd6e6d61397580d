"""The command line as a whole: shell completion, --version, help (whole summaries, one default style), --ggufs,
and every command's --json parsed from real runs on the tiny models."""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.shell_completion import get_completion_class
from click.testing import CliRunner

from qrun import registry, settings
from qrun.cli import main
from qrun.completion import COMPLETE_VAR, SHELLS, model_names
from qrun.runner import profile


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


# --- qrun completion ----------------------------------------------------------------------------------------------
@pytest.fixture
def qrun_on_path(tmp_path) -> dict[str, str]:
    """An environment whose PATH starts with a `qrun` that runs this checkout's qrun with this Python (what the
    completion scripts call back, as the installed console script would)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "qrun"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m qrun "$@"\n', encoding="utf-8")
    shim.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


def _bash_complete(env: dict[str, str], script: str, words: list[str]) -> list[str]:
    """COMPREPLY after bash runs the generated completion function for `qrun WORDS` (the last word being typed)."""
    program = "\n".join(
        [
            script,
            "COMP_WORDS=(qrun " + " ".join(f"'{w}'" for w in words) + ")",
            f"COMP_CWORD={len(words)}",
            "_qrun_completion qrun",
            'printf "%s\\n" "${COMPREPLY[@]}"',
        ]
    )
    proc = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", program], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stdout.splitlines() if line]


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completion_script_completes_commands_models_and_quants(qrun_on_path):
    result = invoke("completion", "bash")
    assert result.exit_code == 0, result.output
    script = result.stdout
    assert "complete -o nosort -F _qrun_completion qrun" in script and COMPLETE_VAR in script

    # each is a real `qrun` process; every command's callbacks are checked in-process below
    assert _bash_complete(qrun_on_path, script, ["com"]) == ["completion"]
    assert _bash_complete(qrun_on_path, script, ["ask", "q"]) == ["qwen-7b-chat", "qwen"]
    assert _bash_complete(qrun_on_path, script, ["convert", "chatglm3", "--quant", "q4_k"]) == ["Q4_K_S", "Q4_K_M"]
    assert _bash_complete(qrun_on_path, script, ["ask", "qwen", "hi", "--quant", "a"]) == ["auto"]
    # tune takes a comma list: the last item is completed, the ones before it kept
    assert _bash_complete(qrun_on_path, script, ["tune", "--quant", "Q4_0,Q6"]) == ["Q4_0,Q6_K"]
    assert _bash_complete(qrun_on_path, script, ["convert", "--gg"]) == ["--ggufs"]


def test_every_model_argument_and_quant_option_completes():
    """Every MODEL argument completes the registry's names and every --quant option the quant types."""
    ctx = main.make_context("qrun", [], resilient_parsing=True)
    checked = set()
    for name, cmd in main.commands.items():
        for param in cmd.params:
            if param.name in ("model", "models") or param.metavar == "MODEL":
                values = [item.value for item in param.shell_complete(ctx, "")]
                assert values == model_names(), (name, param.name)
                checked.add((name, "model"))
            if {"--quant", "--quants", "--ref"} & set(getattr(param, "opts", [])):  # quality: --quants, --ref
                values = [item.value for item in param.shell_complete(ctx, "")]
                assert set(values) >= set(settings.QUANTS), (name, param.name)
                checked.add((name, "quant"))
    # the commands that take a model and a quant type today (other commands may add more)
    for name in ("convert", "ask", "chat", "serve", "bench", "tune", "demo", "quality", "eval", "show", "rm"):
        assert (name, "model") in checked and (name, "quant") in checked, name
    assert set(model_names()) == {n for s in registry.MODELS for n in (s.name, *s.aliases)}
    # ask and chat also take a .gguf path: a word that looks like one is left to the shell's file completion
    model_arg = next(p for p in main.commands["ask"].params if p.name == "model")
    assert [(i.type, i.value) for i in model_arg.shell_complete(ctx, "ggufs/q")] == [("file", "ggufs/q")]
    # a comma list never offers a type it already holds
    tune_quant = next(p for p in main.commands["tune"].params if p.name == "quants")
    assert [i.value for i in tune_quant.shell_complete(ctx, "Q4_0,q4")] == ["Q4_0,Q4_K_S", "Q4_0,Q4_K_M"]


# how each script passes the word being typed: zsh its index in COMP_WORDS, fish the word itself
@pytest.mark.parametrize("shell, cword", [("zsh", "2"), ("fish", "chat")])
def test_zsh_and_fish_scripts_are_clicks_own_for_qrun(shell, cword, qrun_on_path):
    result = invoke("completion", shell)
    assert result.exit_code == 0, result.output
    expected = get_completion_class(shell)(main, {}, "qrun", COMPLETE_VAR).source()
    assert result.stdout == expected
    assert f"{COMPLETE_VAR}={shell}_complete" in result.stdout and "qrun" in result.stdout
    # what the script asks `qrun` for, answered by the real command line (the shells may not be installed)
    proc = subprocess.run(
        ["qrun"],
        env={**qrun_on_path, COMPLETE_VAR: f"{shell}_complete", "COMP_WORDS": "qrun ask chat", "COMP_CWORD": cword},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "chatglm3-6b" in proc.stdout and "chatglm3" in proc.stdout
    if shutil.which(shell):  # run the script in the shell itself where it exists
        check = subprocess.run([shell, "-c", result.stdout], env=qrun_on_path, capture_output=True, timeout=60)
        assert check.returncode == 0, check.stderr


def test_completion_of_an_unknown_shell_is_one_error_line():
    result = invoke("completion", "tcsh")
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "tcsh" in lines[0], result.stderr


def test_readme_says_how_to_install_completion():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    for shell in SHELLS:
        assert f"qrun completion {shell}" in readme


# --- qrun --version -----------------------------------------------------------------------------------------------
def test_version_names_qrun_llama_cpp_python_and_the_llama_cpp_build():
    import importlib.metadata

    import llama_cpp

    import qrun

    proc = subprocess.run([sys.executable, "-m", "qrun", "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"qrun {qrun.__version__}"
    assert lines[1] == f"llama-cpp-python {importlib.metadata.version('llama-cpp-python')}"
    assert lines[1] == f"llama-cpp-python {llama_cpp.__version__}"
    # llama.cpp's own version string and the commit its ggml was built from, read from the loaded library
    lib = llama_cpp.llama_cpp._lib
    lib.ggml_commit.restype = lib.llama_version.restype = ctypes.c_char_p
    assert lines[2].startswith(f"llama.cpp {lib.llama_version().decode()} (")
    assert f"commit {lib.ggml_commit().decode()}" in lines[2]
    assert lines[3].startswith("llama.cpp system info: ") and "=" in lines[3]
    assert proc.stderr == ""


# --- --ggufs on convert (and its old name --out) --------------------------------------------------------------------
def test_convert_writes_into_ggufs_and_out_is_the_same_folder_with_a_notice(tiny_checkpoints, tmp_path):
    ckpt = str(tiny_checkpoints["deepseek-llm-7b-chat"])
    ggufs = tmp_path / "my-ggufs"
    result = invoke("convert", "deepseek", "--from", ckpt, "--quant", "F16", "--ggufs", str(ggufs), "--json")
    assert result.exit_code == 0, result.output
    (manifest,) = json.loads(result.stdout)
    assert manifest["path"] == str(ggufs / "deepseek-llm-7b-chat-F16.gguf") and Path(manifest["path"]).is_file()
    assert "--out" not in result.stderr
    before = (ggufs / "deepseek-llm-7b-chat-F16.gguf").read_bytes()

    again = invoke("convert", "deepseek", "--from", ckpt, "--quant", "F16", "--out", str(ggufs), "--json")
    assert again.exit_code == 0, again.output
    assert [line for line in again.stderr.splitlines() if "--out" in line] == [
        "note: `qrun convert --out` is now --ggufs, as in every other command; --out still works"
    ]
    (manifest,) = json.loads(again.stdout)
    assert manifest["status"] == "up_to_date" and manifest["path"] == str(ggufs / "deepseek-llm-7b-chat-F16.gguf")
    assert (ggufs / "deepseek-llm-7b-chat-F16.gguf").read_bytes() == before


# --- help: whole summaries, one way of writing defaults, one spelling per concept -----------------------------------
# models_cmd is being reworked on another branch (show, rm, foreign GGUFs): its --ggufs help gets the same
# show_default there; until then it is the one option allowed to write its default by hand
ELSEWHERE: set[tuple[str, str]] = set()


def _options():
    """(command name, its context under `qrun`, option) for every visible option of every command."""
    parent = click.Context(main, info_name="qrun", **main.context_settings)
    yield "qrun", parent, next(p for p in main.params if p.name == "version")
    for name, cmd in sorted(main.commands.items()):
        ctx = click.Context(cmd, info_name=name, parent=parent)
        for param in cmd.params:
            if isinstance(param, click.Option) and not param.hidden:
                yield name, ctx, param


def _has_value_default(param: click.Option, ctx: click.Context) -> bool:
    value = param.get_default(ctx, call=False)
    if value is None or type(value).__name__ == "Sentinel" or value == ():
        return False
    return not (param.is_flag and not param.secondary_opts)  # an on/off flag has no default worth showing


def test_qrun_help_shows_every_command_summary_whole():
    result = CliRunner().invoke(main, ["--help"], terminal_width=80)
    assert result.exit_code == 0, result.output
    commands = result.stdout.split("Commands:", 1)[1]
    assert "..." not in commands
    flat = " ".join(commands.split()).replace("- ", "-")  # Click may wrap a line after a hyphen
    for name, cmd in main.commands.items():
        summary = cmd.get_short_help_str(limit=10_000)
        if not cmd.short_help:  # the whole first paragraph of the help, not a cut
            assert summary == " ".join((cmd.help or "").split("\n\n")[0].split()), name
        assert f"{name} {' '.join(summary.split())}".replace("- ", "-") in flat, name


def test_every_default_is_written_one_way():
    checked = 0
    for name, ctx, param in _options():
        where = f"qrun {name} {param.opts[0]}"
        record = param.get_help_record(ctx)
        assert record is not None, where
        help_text = record[1]
        if (name, param.opts[0]) in ELSEWHERE:
            continue
        # never by hand ("(default: x)", "[x default]", "[default: x]"): only Click's show_default writes it
        assert "default" not in (param.help or "").lower(), where
        assert help_text.count("[default: ") <= 1, where
        if isinstance(param.show_default, str):
            assert help_text.endswith(f"[default: ({param.show_default})]"), where
            checked += 1
        elif _has_value_default(param, ctx):
            assert help_text.endswith(f"[default: {param.get_default(ctx, call=False)}]"), where
            checked += 1
        if param.is_bool_flag and param.secondary_opts and param.default is None:  # on / off / not given
            assert isinstance(param.show_default, str), f"{where}: say what not giving it means"
    assert checked > 40


def test_one_spelling_per_concept():
    seen = {"--ggufs": 0, "--threads": 0, "--out": 0}
    for name, _ctx, param in _options():
        opt, help_text = param.opts[0], param.help or ""
        if (name, opt) in ELSEWHERE:
            continue
        if opt == "--ggufs":  # the GGUF folder, on every command that reads or writes one
            assert param.metavar == "DIR" and param.show_default == "QRUN_GGUF_DIR, then ./ggufs", name
            seen[opt] += 1
        elif opt in ("--threads", "--threads-batch"):  # a sweep takes a list, a single run one number
            assert param.metavar in ("N", "N[,N...]"), (name, opt)
            assert ("a list" in help_text) == (param.metavar == "N[,N...]"), (name, opt)
            assert ("one number" in help_text) == (param.metavar == "N"), (name, opt)
            seen["--threads"] += 1
        elif opt in ("--quant", "--quants"):  # one type, or a list where tune and quality compare several
            assert param.metavar in ("QUANT", "QUANT|auto", "Q[,Q...]"), name
        elif opt == "--out":  # never the GGUF folder (convert's old --out is hidden): say which folder it is
            assert re.match(r"(Results|Report|Work) folder: ", help_text), name
            seen[opt] += 1
    assert seen == {"--ggufs": 11, "--threads": 15, "--out": 5}
    for name in ("convert", "models", "show", "rm", "ask", "chat", "serve", "bench", "tune", "quality", "eval"):
        assert "--ggufs" in [opt for p in main.commands[name].params for opt in p.opts], name


# --- --json: one document on stdout, from real runs on the tiny models ---------------------------------------------
JSON_COMMANDS = (
    "ask",
    "convert",
    "models",
    "show",
    "rm",
    "bench",
    "report",
    "score",
    "tune",
    "demo",
    "quality",
    "eval",
)
# the top-level keys README's "JSON output" table promises for each command (a document may carry more)
JSON_SHAPES = {
    "ask": {"answer", "model", "gguf", "sha256", "stats", "settings"},
    "ask --show-prompt": {"prompt_text", "prompt_token_ids"},
    "convert": {"model", "quant", "sha256", "size_bytes", "bits_per_weight", "tensor_types", "source", "steps"}
    | {"status", "path"},
    "models": {"ggufs_dir", "models", "foreign"},
    "show[]": {"file", "size_bytes", "model", "foreign", "quant", "architecture", "tensor_types", "manifest"}
    | {"source", "chat_format", "stop_tokens"},
    "rm": {"deleted"},
    "eval": {"kind", "schema", "suite", "split", "shots", "results"},
    "eval.results[]": {"model", "quant", "gguf_sha256", "accuracy", "ci95", "n_questions", "subjects", "questions"},
    "models[]": {"name", "aliases", "modelscope_id", "hf_id", "gguf_arch", "chat_format", "converted"},
    "bench": {"schema", "schema_version", "machine", "config", "suite", "runs"},
    "report": {"schema", "schema_version", "documents"},
    "score": {"line", "model", "question_id", "score", "source", "matched", "contradicted"},
    "tune": {"schema", "created_utc", "command", "machine", "models", "profile_path"},
    "demo": {"schema", "schema_version", "out_dir", "checkpoints", "ggufs", "answers", "results_json", "report_md"}
    | {"bench", "steps_s", "elapsed_s"},
    "quality": {"kind", "schema", "model", "reference", "text", "ctx_tokens", "top_k", "scored_tokens", "results"}
    | {"results_path"},
    "quality.results[]": {"quant", "gguf_sha256", "kl_mean", "kl_median", "kl_p99", "top1_agreement", "ppl"}
    | {"chunks"},
}
TINY = "deepseek-llm-7b-chat"


def _qrun_json(*args: str, env: dict[str, str] | None = None):
    """A real `qrun ... --json` process: its stdout (file descriptor 1, which llama.cpp could write to as well)
    must be one JSON document and nothing else."""
    proc = subprocess.run(
        [sys.executable, "-m", "qrun", *args, "--json"],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=600,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, f"qrun {' '.join(args)}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout), proc.stderr


def _cli_json(*args: str):
    """`qrun ... --json` in this process, for commands that run no model: stdout must parse as one document."""
    result = invoke(*args, "--json")
    assert result.exit_code == 0, f"qrun {' '.join(args)}: exit {result.exit_code}\n{result.stderr[-3000:]}"
    return json.loads(result.stdout)


def _keys(doc, shape: str) -> None:
    assert isinstance(doc, dict) and set(doc) >= JSON_SHAPES[shape], (shape, sorted(doc))


def test_every_result_command_has_json_and_readme_documents_its_shape():
    for name in JSON_COMMANDS:
        assert "--json" in [opt for p in main.commands[name].params for opt in p.opts], name
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    table = readme.split("## JSON output", 1)[1].split("\n## ", 1)[0]
    for name in JSON_COMMANDS:
        (row,) = [line for line in table.splitlines() if line.startswith(f"| `qrun {name}` |")]
        keys = JSON_SHAPES.get(name, set()) | JSON_SHAPES.get(f"{name}[]", set())
        keys |= JSON_SHAPES.get(f"{name} --show-prompt", set())
        keys |= JSON_SHAPES.get(f"{name}.results[]", set())
        for key in keys:
            assert f"`{key}`" in row, (name, key)


def test_json_of_ask_models_convert_bench_report_and_score(tiny_gguf, tiny_checkpoints, tmp_path):
    ggufs = tmp_path / "ggufs"
    ggufs.mkdir()
    gguf = tiny_gguf(TINY, "Q4_K_M")
    for source in (gguf, gguf.with_suffix(".json")):
        (ggufs / source.name).symlink_to(source)
    g = ["--ggufs", str(ggufs)]

    answer, _ = _qrun_json("ask", "deepseek", "你好", "--max-tokens", "2", "--temperature", "0", *g)
    _keys(answer, "ask")
    assert answer["model"] == TINY and answer["stats"]["gen_tokens"] <= 2
    shown, _ = _qrun_json("ask", "deepseek", "你好", "--show-prompt", *g)
    _keys(shown, "ask --show-prompt")

    listed = _cli_json("models", *g)
    _keys(listed, "models")
    for row in listed["models"]:
        _keys(row, "models[]")
    assert [f["quant"] for r in listed["models"] if r["name"] == TINY for f in r["converted"]] == ["Q4_K_M"]

    ckpt = str(tiny_checkpoints[TINY])
    converted, _ = _qrun_json("convert", "deepseek", "--from", ckpt, "--quant", "F16", "--ggufs", str(tmp_path / "f16"))
    assert isinstance(converted, list) and len(converted) == 1
    _keys(converted[0], "convert")

    suite = json.loads((Path(__file__).resolve().parents[1] / "bench" / "suites" / "seed.json").read_text("utf-8"))
    suite["name"], suite["questions"] = "one", suite["questions"][:1]
    suite_path = tmp_path / "one.json"
    suite_path.write_text(json.dumps(suite, ensure_ascii=False), encoding="utf-8")
    bench_dir = tmp_path / "bench"
    bench_args = ["--suite", str(suite_path), "--threads", "1", "--max-tokens", "2", "--out", str(bench_dir)]
    bench, bench_err = _qrun_json("bench", "deepseek", *g, *bench_args)
    _keys(bench, "bench")
    assert bench["schema"] == "qrun-bench-results" and [r["status"] for r in bench["runs"]] == ["ok"]
    assert "results: " in bench_err  # where the files are: on stderr

    results_json = str(bench_dir / "results.json")
    one = _cli_json("report", results_json, "--out", str(tmp_path / "r1"))
    assert one == bench  # one RESULTS: its document as bench printed it
    merged = _cli_json("report", results_json, results_json, "--out", str(tmp_path / "r2"))
    _keys(merged, "report")
    assert merged["schema"] == "qrun-bench-report" and merged["documents"] == [bench, bench]
    template = tmp_path / "verdicts.csv"
    written = _cli_json("report", results_json, "--verdicts-template", str(template))
    assert written == {"verdicts_template": str(template)} and template.is_file()

    answers = tmp_path / "answers.jsonl"
    answers.write_text(
        json.dumps({"question_id": suite["questions"][0]["id"], "answer": "x", "model": TINY}) + "\n", encoding="utf-8"
    )
    scored = _cli_json("score", str(answers), "--suite", str(suite_path))
    assert isinstance(scored, list) and len(scored) == 1
    _keys(scored[0], "score")

    # quality: the quant against itself on a short text (2 windows of 16 tokens), in a real process
    text = tmp_path / "text.txt"
    text.write_text(
        "江水向东流，两岸的山很高。老人坐在船头，慢慢地讲起了村子里的往事。孩子们围着他，听得很认真。", "utf-8"
    )
    q = ["--ref", "Q4_K_M", "--quants", "Q4_K_M", "--text", str(text), "--ctx", "16", "--top-k", "4"]
    home = {"QRUN_HOME": str(tmp_path / "home")}
    quality_doc, _ = _qrun_json("quality", "deepseek", *g, *q, "--out", str(tmp_path / "q"), env=home)
    _keys(quality_doc, "quality")
    for row in quality_doc["results"]:
        _keys(row, "quality.results[]")
    assert quality_doc["kind"] == "qrun-quality" and [r["quant"] for r in quality_doc["results"]] == ["Q4_K_M"]
    assert quality_doc["results"][0]["kl_mean"] == pytest.approx(0, abs=1e-7)  # float32 log-probabilities in the cache

    # show, eval and rm, in this process (rm last: it deletes the folder's link to the GGUF)
    shown_files = _cli_json("show", "deepseek", *g)
    assert isinstance(shown_files, list) and len(shown_files) == 1
    _keys(shown_files[0], "show[]")
    exams = Path(__file__).resolve().parent / "data" / "exams" / "ceval"
    evaluated = _cli_json(
        "eval", "ceval", "deepseek", *g, "--data", str(exams), "--limit", "1", "--out", str(tmp_path / "e")
    )
    _keys(evaluated, "eval")
    for row in evaluated["results"]:
        _keys(row, "eval.results[]")
    removed = _cli_json("rm", "deepseek", "--yes", *g)
    assert removed == {"deleted": [str(ggufs / gguf.name), str(ggufs / gguf.with_suffix(".json").name)]}
    assert not list(ggufs.glob("*.gguf")) and not list(ggufs.glob("*.json"))  # the lock file may stay

    # tune --json from a real run: tests/test_identity.py (the profile document plus profile_path); its keys here
    _keys({**profile.new_document(command="qrun tune"), "profile_path": "x"}, "tune")


def test_demo_json_is_one_document_and_its_own_output_goes_to_stderr(tmp_path):
    out = tmp_path / "demo"
    doc, stderr = _qrun_json(
        "demo",
        "--out",
        str(out),
        "--model",
        "deepseek",
        "--max-tokens",
        "2",
        "--threads",
        "1",
        env={"QRUN_HOME": str(tmp_path / "home")},
    )
    _keys(doc, "demo")
    assert doc["schema"] == "qrun-demo" and doc["out_dir"] == str(out)
    assert list(doc["answers"]) == [TINY]
    _keys(doc["answers"][TINY], "ask")
    _keys(doc["bench"], "bench")
    assert doc["bench"] == json.loads((out / "bench" / "results.json").read_text(encoding="utf-8"))
    assert doc["ggufs"] == {TINY: str(out / "ggufs" / f"{TINY}-Q4_K_M.gguf")}
    assert "qrun demo: tiny random-weight models" in stderr and "── deepseek-llm-7b-chat" in stderr
