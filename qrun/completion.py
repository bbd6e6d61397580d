"""Shell completion: the callbacks that complete model names and quant types, and `qrun completion SHELL`.

Completion itself is Click's (click.shell_completion): the script a shell sources calls `qrun` again with
_QRUN_COMPLETE=<shell>_complete set, and Click answers with the commands, options and values that fit the word being
typed. The callbacks here give it the values Click cannot know: the registry's model names and aliases, and the
GGUF types `--quant` accepts.
"""

from __future__ import annotations

import click
from click.shell_completion import CompletionItem, get_completion_class

from qrun import registry, settings
from qrun.errors import UsageError

SHELLS = ("bash", "zsh", "fish")
PROG_NAME = "qrun"
# Click's own name for it (`_{PROG_NAME}_COMPLETE`, upper case): `qrun` reads it without being told
COMPLETE_VAR = "_QRUN_COMPLETE"
AUTO_QUANT = "auto"  # ask/chat/bench: the type `qrun tune` measured fastest (qrun.runner.resolve)


def model_names() -> list[str]:
    """Every name a MODEL argument accepts: each canonical name, then its aliases, in registry order."""
    return [name for spec in registry.MODELS for name in (spec.name, *spec.aliases)]


def complete_model(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Model names and aliases that start with the typed word; a word that looks like a path completes as a file
    (ask and chat also take a .gguf path)."""
    if incomplete.startswith((".", "/", "~")) or "/" in incomplete:
        return [CompletionItem(incomplete, type="file")]
    typed = incomplete.lower()
    return [
        CompletionItem(name, help=spec.hf_id if name == spec.name else f"= {spec.name}")
        for spec in registry.MODELS
        for name in (spec.name, *spec.aliases)
        if name.startswith(typed)
    ]


def _quants(incomplete: str, choices: tuple[str, ...]) -> list[CompletionItem]:
    # a comma list (`qrun tune --quant Q4_0,Q4_K_M`): complete the last item, keep what is before it
    done, _, typed = incomplete.rpartition(",")
    prefix = f"{done}," if done else ""
    listed = {item.strip().upper() for item in done.split(",")} if done else set()  # not offered twice
    return [
        CompletionItem(prefix + q) for q in choices if q.lower().startswith(typed.lower()) and q.upper() not in listed
    ]


def complete_quant(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """GGUF types of settings.QUANTS that start with the typed word (case-insensitive, as --quant reads them)."""
    return _quants(incomplete, settings.QUANTS)


def complete_quant_or_auto(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """As complete_quant, plus `auto` (ask and chat: the type the tuning profile measured fastest)."""
    return _quants(incomplete, (*settings.QUANTS, AUTO_QUANT))


def completion_script(cli: click.Command, shell: str) -> str:
    """The script Click generates for SHELL and the `qrun` command: what `_QRUN_COMPLETE=<shell>_source qrun`
    prints."""
    complete_class = get_completion_class(shell)
    if complete_class is None:
        raise UsageError(f"no completion for the shell {shell!r}", f"use one of: {', '.join(SHELLS)}")
    return complete_class(cli, {}, PROG_NAME, COMPLETE_VAR).source()


@click.command("completion", short_help="Print the shell completion script for bash, zsh or fish.")
@click.argument("shell", type=click.Choice(SHELLS))
def completion_cmd(shell):
    """Print the shell completion script for SHELL: it completes commands, options, model names and quant types.

    \b
    eval "$(qrun completion bash)"                        # add to ~/.bashrc
    eval "$(qrun completion zsh)"                         # add to ~/.zshrc (after compinit)
    qrun completion fish > ~/.config/fish/completions/qrun.fish
    """
    click.echo(completion_script(click.get_current_context().find_root().command, shell), nl=False)
