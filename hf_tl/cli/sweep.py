"""`hf-tl sweep study=NAME [only=...] [key=value ...]`: run every cell of a study, one after another.

What it does and writes: `hf_tl.studies.sweep`.
"""

from __future__ import annotations

import sys

from hf_tl.cli.arguments import command_help, parse_key_values, split_overrides, wants_help
from hf_tl.config.commands import SweepArgs
from hf_tl.errors import RecipeError, cli

OVERRIDES = (
    "Recipe overrides (dotted keys, e.g. training.epochs=2) apply to every cell; `hf-tl train --help` lists "
    "them. output.dir is the sweep's to choose."
)


def parse_args(argv: list[str]) -> tuple[SweepArgs, list[str]]:
    """Split `key=value` arguments into the sweep's own and recipe overrides (dotted keys)."""
    mine, overrides = split_overrides(SweepArgs, argv, "sweep", "study=malpure2021")
    if not any(arg.startswith("study=") for arg in mine):
        raise RecipeError("no study given: start with study=NAME (malpure2021, malpure2021_repo, zhou2021) or a path.")
    return parse_key_values(SweepArgs, mine), overrides


@cli
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if wants_help(argv):
        print(command_help(__doc__, [("sweep keys", SweepArgs, "")], OVERRIDES))
        return
    args, overrides = parse_args(argv)
    from hf_tl.studies.sweep import run_sweep

    run_sweep(args, overrides)
