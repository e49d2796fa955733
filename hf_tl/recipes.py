"""`python -m hf_tl.recipes list | show NAME | copy NAME DEST`: browse and copy the shipped recipes."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from hf_tl.errors import HfTlError, cli
from hf_tl.recipe import available_recipes, find_recipe


def describe(name: str) -> str:
    """The first comment line of a recipe, which says what it does."""
    for line in find_recipe(name).read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def copy_recipe(name: str, dest: str) -> Path:
    source = find_recipe(name)
    target = Path(dest)
    if target.suffix not in (".yaml", ".yml"):  # a folder, made if need be
        target.mkdir(parents=True, exist_ok=True)
        target = target / source.name
    if target.exists():
        raise HfTlError(f"{target} already exists; choose another destination or remove it first.")
    shutil.copyfile(source, target)
    return target


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hf_tl.recipes", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="list the shipped recipes")
    show = commands.add_parser("show", help="print a recipe")
    show.add_argument("name")
    copy = commands.add_parser("copy", help="copy a recipe to edit it")
    copy.add_argument("name")
    copy.add_argument("dest")
    args = parser.parse_args(argv)
    if args.command == "list":
        names = available_recipes()
        width = max(map(len, names), default=0)
        for name in names:
            print(f"{name:<{width}}  {describe(name)}")
    elif args.command == "show":
        sys.stdout.write(find_recipe(args.name).read_text())
    else:
        target = copy_recipe(args.name, args.dest)
        print(f"copied {args.name} to {target}; run it with recipe={target}")


if __name__ == "__main__":
    main()
