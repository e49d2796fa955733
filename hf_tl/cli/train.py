"""`hf-tl train recipe=NAME [key=value ...]`: one fine-tuning run, start to finish.

Runs in this process, or, when there is an accelerate config (`accelerate config`) or launch flags are
given, through Accelerate's launcher: `hf-tl train --nproc 2 recipe=NAME` starts two processes, and any
`accelerate launch` flag passes through (`--mixed_precision bf16`, `--config_file F`). An error exits with
hf_tl's status and its one line. `accelerate launch -m hf_tl.train recipe=NAME` works too.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hf_tl.cli.arguments import recipe_help, wants_help
from hf_tl.cli.launch import LAUNCH_HELP, launch, split_launch_flags, wants_launcher
from hf_tl.config.recipe import Recipe, check_resume, recipe_from_argv, sets_trainer_keys
from hf_tl.errors import cli
from hf_tl.runs.folder import check_writable


def checked_recipe(argv: list[str]) -> Recipe:
    """The recipe, and its output folder when it names one, checked before torch is imported: a mistyped key or
    a folder that cannot be written is answered in a fraction of a second."""
    recipe = recipe_from_argv(argv)
    check_resume(recipe.training)
    _check_trainer_keys(recipe)
    one_process = os.environ.get("WORLD_SIZE", "1") == "1"  # ranks of a launch: the run's main process checks it
    if recipe.output.dir and one_process:
        check_writable(Path(recipe.output.dir), "output.dir", f"runs/{recipe.name}")
    return recipe


def _check_trainer_keys(recipe: Recipe) -> None:
    """training.report_to, training.optimizer and training.args against transformers' own lists, before a launch
    starts its processes; only when set, since it imports transformers."""
    if sets_trainer_keys(recipe.training):
        from hf_tl.training.arguments import check_trainer_keys

        check_trainer_keys(recipe)


@cli
def main(argv: list[str] | None = None) -> None:
    """`hf-tl train`: checks the recipe here, then runs it here or through Accelerate's launcher."""
    argv = sys.argv[1:] if argv is None else argv
    if wants_help(argv):
        print(recipe_help(__doc__, LAUNCH_HELP))
        return
    flags, overrides = split_launch_flags(argv)
    recipe = checked_recipe(overrides)
    if wants_launcher(flags):
        sys.exit(launch(flags, overrides))
    from hf_tl.training.run import run

    run(recipe)


@cli
def run_here(argv: list[str] | None = None) -> None:
    """`python -m hf_tl.train` (and `accelerate launch -m hf_tl.train`): the run, in this process."""
    argv = sys.argv[1:] if argv is None else argv
    if wants_help(argv):
        print(recipe_help(__doc__))
        return
    recipe = checked_recipe(argv)
    from hf_tl.training.run import run

    run(recipe)
