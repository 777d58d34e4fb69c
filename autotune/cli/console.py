"""Rich consoles for the CLI's tables, and the layout of its --help.

Tables keep their width when the output is a file or a pipe. Help is click's plain layout (no boxes, no type
labels such as ``<bool>``), wrapped at the terminal width (at most 120 columns) between words only: a
hyphenated word (``chunked-prefill``, ``--min-improvement``) is never split across two lines.
"""

from __future__ import annotations

import re
import sys

from rich.console import Console
from typer.core import TyperCommand, TyperGroup


def console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else 200)


def _base_formatter() -> type:
    try:  # typer 0.2x and newer vendor click as typer._click
        from typer._click.formatting import HelpFormatter
    except ImportError:
        from click.formatting import HelpFormatter
    return HelpFormatter


_KEEP = "\u2011"  # stands for "-" while the text is wrapped: the wrapper breaks lines after hyphens


_TYPE_LABEL = re.compile(r" <[^<>]*>$")  # typer's type label after an argument's name: "FILE <path>"
_REQUIRED = re.compile(r"\{([^{}\s]+)\}")  # typer's usage mark of a required argument: "{FILE}"


class HelpFormatter(_base_formatter()):
    """click's help formatter that wraps between words only, never after the hyphen inside a word, and names
    arguments by their metavar alone (no ``<path>``, ``<list[Path]>`` type labels, no braces)."""

    def write_usage(self, prog: str, args: str = "", prefix: str | None = None) -> None:
        super().write_usage(prog, _REQUIRED.sub(r"\1", args), prefix)

    def write_text(self, text: str) -> None:
        super().write_text(text.replace("-", _KEEP))

    def write_dl(self, rows, col_max: int = 30, col_spacing: int = 2) -> None:
        rows = [(_TYPE_LABEL.sub("", term), *rest) for term, *rest in rows]
        super().write_dl([tuple(cell.replace("-", _KEEP) for cell in row) for row in rows], col_max, col_spacing)

    def getvalue(self) -> str:
        return super().getvalue().replace(_KEEP, "-")


def _help(command, ctx) -> str:
    formatter = HelpFormatter(width=ctx.terminal_width, max_width=ctx.max_content_width or 120)
    command.format_help(ctx, formatter)
    return formatter.getvalue().rstrip("\n")


# what an option's value is called in --help and in error messages (typer would print its type: <str>, <int range>)
METAVARS = {
    "gpu": "NAME", "grid": "NAME", "dtype": "NAME", "kernel": "NAMES", "trials": "N", "seed": "N", "seeds": "N",
    "patience": "N", "compile_workers": "N", "rep_ms": "MS", "min_improvement": "F", "fp8_tol": "FLOAT",
    "time_budget": "SECONDS", "devices": "LIST", "storage": "URL", "db": "PATH", "fp16_db": "PATH", "out": "FILE",
    "plot": "FILE", "output": "FILE", "format": "FORMAT",
}


class Command(TyperCommand):
    """A command whose --help uses :class:`HelpFormatter`, whose options' values have names (``--db PATH``), and
    which is listed with its help's first sentence whole (wrapped), never cut short with "..."."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if param.param_type_name == "option" and not param.is_flag and param.metavar is None:
                param.metavar = METAVARS.get(param.name, (param.name or "value").upper())

    def get_help(self, ctx) -> str:
        return _help(self, ctx)

    def get_short_help_str(self, limit: int = 45) -> str:
        return super().get_short_help_str(limit=10_000)


class Group(TyperGroup):
    """The command group, whose --help uses :class:`HelpFormatter`."""

    def get_help(self, ctx) -> str:
        return _help(self, ctx)
