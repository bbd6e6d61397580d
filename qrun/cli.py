"""The `qrun` command: a Click group whose subcommands live next to the library they drive
(convert/cli.py, runner/cli.py, bench/cli.py, qrun/demo/cli.py). Errors are turned into one line here, in one place."""

from __future__ import annotations

import errno
import os
import sys


def _fill_closed_std_streams() -> None:
    """Give stdin, stdout or stderr that the caller closed (`qrun chat <&-`, `qrun ask ... >&-`) /dev/null.

    Python leaves sys.stdin/stdout/stderr None then (a traceback at the first read or write), and the next file
    opened gets descriptor 0, 1 or 2: importing llama_cpp opens one, and a GGUF, a lock or results.json there could
    receive whatever C code prints. With /dev/null in place, a closed stdin reads as empty and a closed stdout or
    stderr discards, as if redirected there. Runs before the imports below, which open files.
    """
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        if getattr(sys, name) is not None:
            continue
        try:
            os.fstat(fd)
            setattr(sys, name, open(os.devnull, mode, encoding="utf-8"))  # fd taken by an embedding program
            continue
        except OSError:
            pass
        null_fd = os.open(os.devnull, os.O_RDONLY if mode == "r" else os.O_WRONLY)
        if null_fd != fd:
            os.dup2(null_fd, fd)
            os.close(null_fd)
        setattr(sys, name, open(fd, mode, encoding="utf-8", closefd=False))


_fill_closed_std_streams()

import click  # noqa: E402 (after the std streams are filled: see above)

from qrun import __version__, interrupts, settings  # noqa: E402
from qrun.errors import QrunError  # noqa: E402


class QrunGroup(click.Group):
    """Turns every QrunError into `Error: <what> — <how to fix>` and exit code 1 (traceback with QRUN_DEBUG=1)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.UsageError as err:
            # a bad option value or unknown command: one line too, with where to look, and the same exit code 1
            where = f"qrun {err.ctx.info_name} --help" if err.ctx and err.ctx.parent else "qrun --help"
            # Click lays some messages out over lines ("Choose from:\n\tbash,\n\tzsh"): joined, it stays one line
            message = " ".join(err.format_message().split())
            click.echo(f"Error: {message} — see `{where}`", err=True)
            sys.exit(1)
        except QrunError as err:
            if settings.debug():
                raise
            click.echo(f"Error: {err.one_line()}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            if settings.debug():
                raise
            click.echo("Interrupted.", err=True)
            sys.exit(130)
        except OSError as err:
            if err.errno not in _UNWRITABLE_OUTPUT or not _stdout_broken() or settings.debug():
                raise
            # `qrun ask ... > /dev/full` or a full disk under a redirect: stdout is unusable from here on, so the
            # flush at exit must not fail a second time with a traceback
            _discard_stdout()
            click.echo(
                f"Error: cannot write the output ({err.strerror}) — free space on that disk, or send the output "
                "elsewhere",
                err=True,
            )
            sys.exit(1)

    def format_commands(self, ctx, formatter):
        """The command list with each command's whole summary (its short_help, else the first sentence of its
        help), wrapped rather than cut at the width Click would leave it."""
        rows = [
            (name, cmd.get_short_help_str(limit=10_000))
            for name in self.list_commands(ctx)
            if (cmd := self.get_command(ctx, name)) is not None and not cmd.hidden
        ]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


_UNWRITABLE_OUTPUT = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG)


def _stdout_broken() -> bool:
    """True when writing to stdout itself fails now (the error came from the answer's output, not from a file)."""
    try:
        sys.stdout.flush()
        os.write(sys.stdout.fileno(), b"")
        sys.stdout.write("\n")
        sys.stdout.flush()
    except (OSError, ValueError):
        return True
    return False


def _discard_stdout() -> None:
    null_fd = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null_fd, sys.stdout.fileno())
    os.close(null_fd)


def _print_version(ctx: click.Context, _param, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from qrun.runner.engine import build_info

    info = build_info()
    click.echo(f"qrun {__version__}")
    click.echo(f"llama-cpp-python {info['llama_cpp_python'] or 'unknown'}")
    build = ", ".join(f"{key} {info[key]}" for key in ("ggml", "commit") if info[key])
    click.echo(f"llama.cpp {info['llama_cpp'] or 'unknown'}" + (f" ({build})" if build else ""))
    click.echo(f"llama.cpp system info: {info['system_info']}")
    ctx.exit()


# show_default: every default appears one way, Click's "[default: ...]" (a computed one in parentheses, as
# show_default="..." renders it); max_content_width: help uses a terminal's width up to 120 columns, not 80
@click.group(
    cls=QrunGroup,
    context_settings={"help_option_names": ["-h", "--help"], "show_default": True, "max_content_width": 120},
)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show qrun, llama-cpp-python and llama.cpp versions and exit.",
)
def main():
    """Convert, run and benchmark Chinese chat LLMs on the CPU with llama.cpp.

    \b
    qrun demo                      # offline: tiny models, convert -> ask -> bench -> report
    qrun convert chatglm3          # download, convert to GGUF, quantize to Q4_K_M
    qrun ask chatglm3 "你好"        # one answer, streamed
    qrun bench --threads 2         # speed, memory and scored answers for every converted model
    qrun tune                      # measure load settings on this machine; ask/chat/bench then use them
    """
    interrupts.install(sigterm=True)  # Ctrl-C and SIGTERM stop a llama.cpp call within a second, recorded as partial


def _register() -> None:
    from qrun.bench.cli import bench_cmd, report_cmd, score_cmd
    from qrun.bench.eval_cli import eval_cmd
    from qrun.bench.quality_cli import quality_cmd
    from qrun.bench.tune_cli import tune_cmd
    from qrun.completion import completion_cmd
    from qrun.convert.cli import convert_cmd
    from qrun.convert.models_cli import models_cmd, rm_cmd, show_cmd
    from qrun.demo.cli import demo_cmd
    from qrun.runner.cli import ask_cmd, chat_cmd
    from qrun.runner.serve_cli import serve_cmd

    for cmd in (
        demo_cmd, convert_cmd, models_cmd, show_cmd, rm_cmd, ask_cmd, chat_cmd, serve_cmd,
        bench_cmd, report_cmd, score_cmd, tune_cmd, quality_cmd, eval_cmd, completion_cmd,
    ):  # fmt: skip
        main.add_command(cmd)


_register()
