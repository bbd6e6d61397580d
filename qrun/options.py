"""Click options several commands share, declared once so each is spelled, typed and documented the same way
(tests/test_cli_consistency.py checks the spelling across every command)."""

from __future__ import annotations

from collections.abc import Callable

import click

from qrun import settings
from qrun.completion import complete_quant

GGUFS_DEFAULT = "QRUN_GGUF_DIR, then ./ggufs"  # qrun.settings.gguf_dir resolves it


def ggufs_option(*, name: str = "ggufs_dir", help: str = "Folder of GGUFs.") -> Callable:
    """`--ggufs DIR`: the folder of converted models, on every command that reads or writes one."""
    return click.option(
        "--ggufs",
        name,
        default=None,
        metavar="DIR",
        type=click.Path(file_okay=False),
        show_default=GGUFS_DEFAULT,
        help=help,
    )


def quant_filter_option() -> Callable:
    """`--quant QUANT`: run only the GGUFs of one type (bench, eval); without it every converted type."""
    return click.option(
        "--quant",
        default=None,
        type=click.Choice(settings.QUANTS, case_sensitive=False),
        metavar="QUANT",
        shell_complete=complete_quant,
        show_default="every converted type",
        help=f"Only GGUFs of this type: {', '.join(settings.QUANTS)}.",
    )
