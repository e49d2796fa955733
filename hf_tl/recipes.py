"""`python -m hf_tl.recipes list | show NAME | copy NAME DEST`: browse and copy the shipped recipes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hf_tl.errors import HfTlError, cli
from hf_tl.paths import check_output_folder
from hf_tl.recipe import available_recipes, find_recipe


def describe(name: str) -> str:
    """The first comment line of a recipe, which says what it does."""
    for line in find_recipe(name).read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def copy_recipe(name: str, dest: str) -> Path:
    """Copy a shipped recipe to `dest`: a .yaml path, or a folder (made if need be). Never over anything that
    exists, nor through a symbolic link: the file is created new, or the copy is refused."""
    source = find_recipe(name)
    target = Path(dest)
    if target.suffix not in (".yaml", ".yml"):  # a folder, made if need be
        check_output_folder(target, "DEST")
        target.mkdir(parents=True, exist_ok=True)
        target = target / source.name
    else:
        check_output_folder(target.parent, "DEST")
    try:
        with open(target, "x") as f:  # O_CREAT | O_EXCL: fails on any existing entry, a dangling link included
            f.write(source.read_text())
    except FileExistsError:
        what = "is a symbolic link" if target.is_symlink() else "already exists"
        raise HfTlError(f"{target} {what}; choose another destination or remove it first.") from None
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
