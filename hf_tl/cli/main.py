"""`hf-tl COMMAND ...`: the one entry point. Each command is a small module of `hf_tl.cli`, imported only
when it runs, and each answers `--help` from the dataclasses that check its arguments."""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

from hf_tl.cli.arguments import HELP_FLAGS
from hf_tl.config.recipe import did_you_mean
from hf_tl.errors import RecipeError, cli

PROG = "hf-tl"


@dataclass(frozen=True)
class Command:
    name: str
    module: str  # under hf_tl.cli; its docstring's first line is the usage and the one-line summary

    def summary(self) -> str:
        """What the command does, from its module's docstring: `usage`: summary."""
        doc = importlib.import_module(self.module).__doc__ or ""
        first = " ".join(doc.strip().split("\n\n")[0].split())
        return first.partition("`: ")[2] or first


COMMANDS = {
    c.name: c
    for c in (
        Command("train", "hf_tl.cli.train"),
        Command("eval", "hf_tl.cli.eval"),
        Command("params", "hf_tl.cli.params"),
        Command("analyze", "hf_tl.cli.analyze"),
        Command("select", "hf_tl.cli.select"),
        Command("sweep", "hf_tl.cli.sweep"),
        Command("report", "hf_tl.cli.report"),
        Command("push", "hf_tl.cli.push"),
        Command("download", "hf_tl.cli.download"),
        Command("recipes", "hf_tl.cli.recipes"),
        Command("quickstart", "hf_tl.cli.quickstart"),
    )
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {command.summary()}" for name, command in COMMANDS.items()]
    return "\n".join(
        [
            f"usage: {PROG} COMMAND [key=value ...]",
            "Fine-tune pretrained image backbones and compare how they transfer.",
            "",
            "commands:",
            *lines,
            "",
            f"`{PROG} COMMAND --help` lists a command's keys, with their types, defaults and choices.",
        ]
    )


@cli
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in HELP_FLAGS:
        print(usage())
        return
    if argv[0] == "--version":
        print(f"{PROG} {_version()}")
        return
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        raise RecipeError(f"unknown command '{name}'.{did_you_mean(name, COMMANDS)}\n  commands: {', '.join(COMMANDS)}")
    importlib.import_module(COMMANDS[name].module).main(rest)


def _version() -> str:
    try:
        return version("hf-tl")
    except PackageNotFoundError:
        return "(not installed)"
