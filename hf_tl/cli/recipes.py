"""`hf-tl recipes list | show NAME | copy NAME DEST`: browse the shipped recipes, and copy one to edit it."""

from __future__ import annotations

import json
import shlex
import sys

from hf_tl.cli.arguments import subcommand_arguments_of
from hf_tl.config.catalog import copy_recipe, describe
from hf_tl.config.commands import RecipesCopyArgs, RecipesListArgs, RecipesShowArgs
from hf_tl.config.recipe import available_recipes, find_recipe
from hf_tl.errors import cli

COMMANDS = {"list": RecipesListArgs, "show": RecipesShowArgs, "copy": RecipesCopyArgs}
EXAMPLE = "hf-tl recipes copy quickstart my_recipes/"


def _list(args: RecipesListArgs) -> None:
    names = available_recipes()
    if args.json:
        print(json.dumps([{"name": n, "description": describe(n), "path": str(find_recipe(n))} for n in names]))
        return
    width = max(map(len, names), default=0)
    for name in names:
        print(f"{name:<{width}}  {describe(name)}")


def _show(args: RecipesShowArgs) -> None:
    sys.stdout.write(find_recipe(args.name).read_text())


def _copy(args: RecipesCopyArgs) -> None:
    target = copy_recipe(args.name, args.dest)
    print(f"copied {args.name} to {target}; run it with: {shlex.join(['hf-tl', 'train', f'recipe={target}'])}")


ACTIONS = {"list": _list, "show": _show, "copy": _copy}


@cli
def main(argv: list[str] | None = None) -> None:
    chosen = subcommand_arguments_of(__doc__, COMMANDS, argv, EXAMPLE)
    if chosen is not None:
        ACTIONS[chosen[0]](chosen[1])
