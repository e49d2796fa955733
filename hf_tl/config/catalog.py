"""The shipped recipes as a catalogue: what each does, and a copy to edit."""

from __future__ import annotations

from pathlib import Path

from hf_tl.config.recipe import find_recipe
from hf_tl.errors import HfTlError
from hf_tl.runs.paths import check_output_folder


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
