"""`qrun ask` and `qrun chat`: thin Click commands over runner.ask and runner.chat.

stdout carries only the answer (or one JSON object); notices and --stats go to stderr. Option values are parsed
here into UsageErrors (not Click's exit-2 usage screens) so every bad input is one `Error:` line and exit code 1.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys

import click

from qrun import settings
from qrun.completion import complete_model, complete_quant_or_auto
from qrun.errors import UsageError
from qrun.options import ggufs_option
from qrun.runner import ask as ask_lib
from qrun.runner import chat as chat_lib
from qrun.runner import chat_input, chat_log
from qrun.text import check_text, decode_utf8


class _Number(click.ParamType):
    """int/float option whose bad text becomes a one-line UsageError (handled by qrun.cli like every QrunError)."""

    def __init__(self, cast, name: str, what: str):
        self.cast, self.name, self.what = cast, name, what

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        try:
            return self.cast(str(value).strip())
        except ValueError:
            raise UsageError(f"{param.opts[0]} must be {self.what}, got {value!r}") from None


INT, FLOAT = _Number(int, "integer", "an integer"), _Number(float, "number", "a number")


def _notice(message: str) -> None:
    click.echo(message, err=True)


def _model_options(f):
    """The sampling options of ask and chat, then the load settings (load_options)."""
    for option in reversed(
        [
            click.option("--system", default=None, show_default="the model's own, e.g. Qwen's", help="System prompt."),
            click.option(
                "--max-tokens", type=INT, default=None, show_default="the model's, 512", help="Most tokens to generate."
            ),
            click.option(
                "--temperature",
                type=FLOAT,
                default=None,
                show_default="the model's",
                help="0 = greedy and reproducible.",
            ),
            click.option(
                "--top-p", type=FLOAT, default=None, show_default="the model's", help="Nucleus sampling, in (0, 1]."
            ),
            click.option(
                "--top-k", type=INT, default=None, show_default="the model's", help="Top-k sampling, 0 = off."
            ),
            click.option("--seed", type=INT, default=settings.DEFAULT_SEED, show_default=True, help="Sampling seed."),
        ]
    ):
        f = option(f)
    return load_options(f)


def load_options(f):
    """The load-setting flags every command that loads a model takes (resolved by qrun.runner.resolve)."""
    for option in reversed(
        [
            click.option(
                "--threads",
                type=INT,
                default=None,
                metavar="N",
                show_default="QRUN_THREADS, else tuning profile, else physical cores",
                help="CPU threads, one number (bench and tune sweep several); 0 = as if not given.",
            ),
            click.option(
                "--threads-batch",
                type=INT,
                default=None,
                metavar="N",
                show_default="--threads if given, else tuning profile, else the same",
                help="Threads for prompt processing, one number.",
            ),
            click.option(
                "--repack/--no-repack",
                default=None,
                show_default="QRUN_REPACK, else tuning profile, else off",
                help="llama.cpp's CPU weight repacking.",
            ),
            click.option(
                "--mmap/--no-mmap",
                default=None,
                show_default="tuning profile, else on",
                help="Map the GGUF instead of reading it into memory.",
            ),
            click.option(
                "--flash-attn/--no-flash-attn",
                default=None,
                show_default="tuning profile, else off",
                help="Flash attention.",
            ),
            click.option(
                "--kv-type",
                default=None,
                metavar="|".join(settings.KV_TYPES),
                show_default="tuning profile, else f16",
                help="KV cache type; q8_0 needs --flash-attn.",
            ),
            click.option(
                "--ctx",
                type=INT,
                default=None,
                metavar="N",
                show_default="ask: prompt + --max-tokens; chat and serve: 4096",
                help="Context tokens, rounded up to a multiple of 256.",
            ),
            click.option(
                "--quant",
                default=None,
                shell_complete=complete_quant_or_auto,
                metavar="QUANT|auto",
                show_default=settings.DEFAULT_QUANT,
                help="Which GGUF of MODEL; auto = the type `qrun tune` measured fastest.",
            ),
            ggufs_option(name="ggufs"),
            click.option(
                "--as",
                "as_model",
                default=None,
                metavar="MODEL",
                shell_complete=complete_model,
                help="Which model a .gguf path not made by `qrun convert` holds (picks its chat format).",
            ),
        ]
    ):
        f = option(f)
    return f


def _shown_piece(data: bytes) -> str:
    """A token piece quoted with its escapes visible ("\\n", "\\t"); a piece that is not whole UTF-8 (one byte of
    a character a byte-fallback vocabulary spells in bytes) as its hex bytes."""
    try:
        return json.dumps(data.decode("utf-8"), ensure_ascii=False)
    except UnicodeDecodeError:
        return f"bytes {data.hex(' ')}"


def format_stats(result: dict) -> str:
    s = result["stats"]
    mib = 1 << 20
    reasons = {
        "eos": "end of sequence",
        "stop_token": "stop token",
        "max_tokens": "max tokens",
        "context_full": "context full (raise --ctx)",
        "interrupted": "interrupted",
    }
    return "\n".join(
        [
            f"model             {result['model']}  ({result['gguf']})",
            f"load              {s['load_s']:.2f} s",
            f"prompt            {s['prompt_tokens']} tokens, {s['prompt_tokens_per_s']:.1f} tokens/s",
            f"first token       {s['ttft_s']:.3f} s",
            f"generated         {s['gen_tokens']} tokens, {s['gen_tokens_per_s']:.1f} tokens/s",
            f"peak RSS          {s['peak_rss_bytes'] / mib:.0f} MiB (anonymous {s['peak_anon_bytes'] / mib:.0f} MiB)",
            f"stop reason       {reasons.get(s['stop_reason'], s['stop_reason'])}",
        ]
    )


@click.command("ask")
@click.argument("model", shell_complete=complete_model)
@click.argument("prompt")
@_model_options
@click.option("--stats", "show_stats", is_flag=True, help="Print speed and memory to stderr.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (answer, stats, model, gguf, sha256).")
@click.option(
    "--show-prompt", is_flag=True, help="Print the prompt as its ids decode, each id with its piece, then exit."
)
@click.option("--truncate", is_flag=True, help="Drop the beginning of a prompt too long for the context.")
def ask_cmd(
    model,
    prompt,
    system,
    max_tokens,
    temperature,
    top_p,
    top_k,
    seed,
    threads,
    threads_batch,
    repack,
    mmap,
    flash_attn,
    kv_type,
    ctx,
    quant,
    ggufs,
    as_model,
    show_stats,
    as_json,
    show_prompt,
    truncate,
):
    """Answer one PROMPT with MODEL (a name, an alias or a .gguf path), streamed to stdout.

    \b
    qrun ask chatglm3 "你好"
    qrun ask qwen "Summarize this:" --system "Be brief." --stats
    qrun ask deepseek "1+1=?" --temperature 0 --json
    qrun ask ggufs/qwen-7b-chat-Q4_K_M.gguf "hi" --show-prompt
    """
    if prompt == "-":
        # `echo ... | qrun ask MODEL -` ends with the newline echo adds: the same prompt as an argument has none.
        # Bytes, decoded here: the locale's decoder would raise (UTF-8 locale) or hide the bad bytes (C locale).
        prompt = decode_utf8(sys.stdin.buffer.read(), what="the prompt on stdin")
        prompt = prompt.removesuffix("\n").removesuffix("\r")
    if show_prompt:
        shown = ask_lib.show_prompt(model, prompt, system=system, quant=quant, ggufs_dir=ggufs, as_model=as_model)
        if as_json:
            click.echo(json.dumps(shown, ensure_ascii=False))
        else:
            click.echo(shown["prompt_text"])
            click.echo(f"--- {len(shown['prompt_token_ids'])} token ids:")
            click.echo(" ".join(map(str, shown["prompt_token_ids"])))
            click.echo("--- id -> piece:")
            for token in shown["tokens"]:
                click.echo(f"{token['id']:>8} -> {_shown_piece(bytes.fromhex(token['piece_hex']))}")
        return

    def stream(text: str) -> None:
        click.echo(text, nl=False)
        sys.stdout.flush()

    result = ask_lib.ask(
        model,
        prompt,
        system=system,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=seed,
        threads=threads,
        threads_batch=threads_batch,
        repack=repack,
        use_mmap=mmap,
        flash_attn=flash_attn,
        kv_type=kv_type,
        ctx=ctx,
        quant=quant,
        ggufs_dir=ggufs,
        truncate=truncate,
        with_sha256=as_json,
        on_text=None if as_json else stream,
        notice=_notice,
        as_model=as_model,
    )
    if as_json:
        click.echo(json.dumps(result, ensure_ascii=False))
    else:
        click.echo("")
    if show_stats:
        click.echo(format_stats(result), err=True)


@click.command("chat")
@click.argument("model", shell_complete=complete_model)
@_model_options
@click.option(
    "--log/--no-log",
    "log",
    default=None,
    show_default="QRUN_CHAT_LOG, else on",
    help="Log each exchange to <qrun home>/logs.db, and keep the line history.",
)
def chat_cmd(
    model,
    system,
    max_tokens,
    temperature,
    top_p,
    top_k,
    seed,
    threads,
    threads_batch,
    repack,
    mmap,
    flash_attn,
    kv_type,
    ctx,
    quant,
    ggufs,
    as_model,
    log,
):
    """Chat with MODEL in the terminal, multi-turn, in the model's own chat format.

    \b
    qrun chat qwen
    qrun chat chatglm3 --system "你是一个乐于助人的助手。" --ctx 8192
    qrun chat deepseek --no-log
    In the chat: /help, /system TEXT, /save FILE, /load FILE, /reset, /exit (or Ctrl-D); Ctrl-C stops an answer.
    A message that starts with \"\"\" goes on until a line that ends with \"\"\"; Up recalls earlier lines.
    """
    ask_lib.check_options(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
    if system is not None:
        check_text(system, what="--system")
    logged = chat_log.logging_on(log)
    engine = ask_lib.load_engine(
        model,
        threads=threads,
        threads_batch=threads_batch,
        repack=repack,
        use_mmap=mmap,
        flash_attn=flash_attn,
        kv_type=kv_type,
        ctx=ctx,
        quant=quant,
        ggufs_dir=ggufs,
        seed=seed,
        notice=_notice,
        as_model=as_model,
    )
    with engine, contextlib.ExitStack() as stack:
        sampling = ask_lib.sampling_options(
            engine.spec, max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k
        )
        session = chat_lib.ChatSession(engine, system=system, sampling=sampling, seed=seed, notice=_notice)
        exchange_log = chat_log.ChatLog(chat_log.log_path(), notice=_notice) if logged else None
        if exchange_log is not None:
            stack.callback(exchange_log.close)
        if chat_input.is_terminal(sys.stdin) and chat_input.is_terminal(sys.stderr):
            history = settings.qrun_home() / chat_input.HISTORY_FILE if logged else None
            lines = chat_input.TerminalLines(sys.stderr, history_path=history, notice=_notice)
            chat_lib.run_chat(session, lines=lines, log=exchange_log)
            return
        # lines decoded by qrun (each checked in ChatSession.turn): a bad byte is one error line, not the session's end
        if not hasattr(sys.stdin, "buffer"):
            chat_lib.run_chat(session, log=exchange_log)
            return
        stdin = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="surrogateescape")
        stack.callback(stdin.detach)  # sys.stdin.buffer stays open for whoever reads it next
        chat_lib.run_chat(session, stdin=stdin, log=exchange_log)  # stdout/stderr: sys's (CliRunner swaps them)
