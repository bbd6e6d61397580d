"""`qrun ask` and `qrun chat`: thin Click commands over runner.ask and runner.chat.

stdout carries only the answer (or one JSON object); notices and --stats go to stderr. Option values are parsed
here into UsageErrors (not Click's exit-2 usage screens) so every bad input is one `Error:` line and exit code 1.
"""

from __future__ import annotations

import io
import json
import sys

import click

from qrun import settings
from qrun.errors import UsageError
from qrun.runner import ask as ask_lib
from qrun.runner import chat as chat_lib
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
            click.option("--system", default=None, help="System prompt (default: the model's own, e.g. Qwen's)."),
            click.option("--max-tokens", type=INT, default=None, help="Most tokens to generate [model default 512]."),
            click.option(
                "--temperature", type=FLOAT, default=None, help="0 = greedy and reproducible [model default]."
            ),
            click.option("--top-p", type=FLOAT, default=None, help="Nucleus sampling, in (0, 1] [model default]."),
            click.option("--top-k", type=INT, default=None, help="Top-k sampling, 0 = off [model default]."),
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
                help="CPU threads [QRUN_THREADS, else tuning profile, else physical cores; 0 = default].",
            ),
            click.option(
                "--threads-batch",
                type=INT,
                default=None,
                help="Threads for prompt processing [--threads if given, else tuning profile, else the same].",
            ),
            click.option(
                "--repack/--no-repack",
                default=None,
                help="llama.cpp's CPU weight repacking [QRUN_REPACK, else tuning profile, else off].",
            ),
            click.option(
                "--mmap/--no-mmap",
                default=None,
                help="Map the GGUF instead of reading it into memory [tuning profile, else on].",
            ),
            click.option(
                "--flash-attn/--no-flash-attn", default=None, help="Flash attention [tuning profile, else off]."
            ),
            click.option(
                "--kv-type",
                default=None,
                metavar="|".join(settings.KV_TYPES),
                help="KV cache type; q8_0 needs --flash-attn [tuning profile, else f16].",
            ),
            click.option(
                "--ctx",
                type=INT,
                default=None,
                help="Context tokens, rounded up to a multiple of 256 [ask: prompt + --max-tokens; chat: 4096].",
            ),
            click.option(
                "--quant",
                default=None,
                help=f"Which GGUF of MODEL; auto = the type `qrun tune` measured fastest [{settings.DEFAULT_QUANT}].",
            ),
            click.option(
                "--ggufs",
                type=click.Path(file_okay=False),
                default=None,
                help="Folder of GGUFs [QRUN_GGUF_DIR, ./ggufs].",
            ),
            click.option(
                "--as",
                "as_model",
                default=None,
                metavar="MODEL",
                help="Which model a .gguf path not made by `qrun convert` holds (picks its chat format).",
            ),
        ]
    ):
        f = option(f)
    return f


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
@click.argument("model")
@click.argument("prompt")
@_model_options
@click.option("--stats", "show_stats", is_flag=True, help="Print speed and memory to stderr.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (answer, stats, model, gguf, sha256).")
@click.option("--show-prompt", is_flag=True, help="Print the exact prompt text and token ids, then exit.")
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
@click.argument("model")
@_model_options
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
):
    """Chat with MODEL in the terminal, multi-turn, in the model's own chat format.

    \b
    qrun chat qwen
    qrun chat chatglm3 --system "你是一个乐于助人的助手。" --ctx 8192
    Type /reset to clear the history, /exit or Ctrl-D to quit; Ctrl-C stops the current answer.
    """
    ask_lib.check_options(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
    if system is not None:
        check_text(system, what="--system")
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
    with engine:
        sampling = ask_lib.sampling_options(
            engine.spec, max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k
        )
        session = chat_lib.ChatSession(engine, system=system, sampling=sampling, seed=seed, notice=_notice)
        # lines decoded by qrun (each checked in ChatSession.turn): a bad byte is one error line, not the session's end
        if not hasattr(sys.stdin, "buffer"):
            chat_lib.run_chat(session)
            return
        stdin = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="surrogateescape")
        try:
            chat_lib.run_chat(session, stdin=stdin)  # stdout/stderr: sys's (CliRunner swaps them in tests)
        finally:
            stdin.detach()  # sys.stdin.buffer stays open for whoever reads it next
