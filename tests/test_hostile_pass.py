"""Bad input from a last hostile pass over every command, kept as regression tests: each is one `Error:` line and
exit code 1 (or the right behaviour), never a traceback, a hang, a silent wrong setting or a lost output."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from qrun.cli import main
from qrun.runner import ask as ask_lib
from qrun.runner.engine import Engine

MODEL = "deepseek-llm-7b-chat"


def _one_error_line(result, *words: str) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("Error:") and result.stderr.count("\n") == 1, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


# A vocab-only load read n_ctx_train as 0, so `--max-tokens 5000` asked for a 5,120-token context and was refused
# as "--ctx 5120 is more than the 4096 tokens ..." although no --ctx was given: it must run in the trained context.
def test_max_tokens_beyond_the_training_context_runs_in_it(tiny_gguf):
    gguf = tiny_gguf(MODEL)
    with Engine.load(gguf, vocab_only=True) as vocab:
        trained = vocab.header.context_length
        assert vocab.n_ctx_train == trained
        eos = vocab.eos_id
    result = ask_lib.ask(str(gguf), "hi", max_tokens=trained + 1000, temperature=0, with_sha256=False,
                         logit_bias={eos: 100.0})  # stop at once: only the context size is under test
    assert result["settings"]["n_ctx"] == trained
