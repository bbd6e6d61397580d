"""`qrun serve`: a thin Click command over qrun.runner.server_run (OpenAI-compatible HTTP server)."""

from __future__ import annotations

import click

from qrun import settings
from qrun.completion import complete_model
from qrun.runner import server_run
from qrun.runner.cli import INT, load_options


def _notice(message: str) -> None:
    click.echo(message, err=True)


@click.command("serve")
@click.argument("models", nargs=-1, metavar="[MODEL]...", shell_complete=complete_model)
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on; 127.0.0.1 = this machine only."
)
@click.option(
    "--port", type=INT, default=8000, metavar="N", show_default=True, help="TCP port; 0 = any free one (printed)."
)
@click.option(
    "--api-key",
    envvar="QRUN_API_KEY",
    metavar="KEY",
    default=None,
    show_default="QRUN_API_KEY, else none: no key asked",
    help="Require `Authorization: Bearer KEY` on every endpoint but /health.",
)
@click.option(
    "--max-queue", type=INT, default=16, metavar="N", show_default=True, help="Requests that may wait; more get 429."
)
@click.option(
    "--max-models",
    type=INT,
    default=0,
    metavar="N",
    show_default=True,
    help="Models kept loaded at most; 0 = as many as fit in memory.",
)
@click.option(
    "--max-tokens-limit",
    type=INT,
    default=settings.DEFAULT_CTX_TOKENS,
    metavar="N",
    show_default=True,
    help="Largest max_tokens a request may ask for.",
)
@load_options
def serve_cmd(
    models,
    host,
    port,
    api_key,
    max_queue,
    max_models,
    max_tokens_limit,
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
    """Serve MODELs (every converted one if none) over OpenAI's chat and completions API.

    \b
    qrun serve                                   # every converted model on http://127.0.0.1:8000/v1
    qrun serve qwen chatglm3 --port 8080 --ctx 8192
    QRUN_API_KEY=secret qrun serve deepseek --host 0.0.0.0
    curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
      -d '{"model": "qwen", "messages": [{"role": "user", "content": "你好"}]}'
    """
    served = server_run.served_models(
        models,
        quant=quant,
        ggufs_dir=ggufs,
        as_model=as_model,
        notice=_notice,
        threads=threads,
        threads_batch=threads_batch,
        repack=repack,
        use_mmap=mmap,
        ctx=ctx,
        flash_attn=flash_attn,
        kv_type=kv_type,
    )
    stopped_by = server_run.serve(
        served,
        host=host,
        port=port,
        api_key=api_key,
        max_queue=max_queue,
        max_models=max_models,
        max_tokens_limit=max_tokens_limit,
        notice=_notice,
    )
    _notice(f"qrun serve: stopped ({stopped_by})" if stopped_by else "qrun serve: stopped")
