"""Where the files shipped with the package live, in a source checkout and in an installed wheel."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from hf_tl.errors import RecipeError

PACKAGE_DIR = Path(__file__).resolve().parent.parent
_CHECKOUT = PACKAGE_DIR.parent


def _shipped(package: str, checkout_dir: str) -> Path:
    """The folder of a data-only package (a namespace package: no __init__.py among the YAML)."""
    try:
        spec = importlib.util.find_spec(package)
    except ModuleNotFoundError:
        spec = None
    for location in (spec.submodule_search_locations or []) if spec else []:
        if Path(location).is_dir():
            return Path(location)
    return _CHECKOUT / checkout_dir


def recipe_dir() -> Path:
    """`recipes/` of the checkout, installed as the package data `hf_tl._recipes`."""
    return _shipped("hf_tl._recipes", "recipes")


def study_dir() -> Path:
    """`recipes/studies/` of the checkout: the studies `hf-tl sweep` runs, and their figures."""
    return recipe_dir() / "studies"


def zoo_dir() -> Path:
    """`recipes/zoos/` of the checkout: the named lists of checkpoints `hf-tl select zoo=NAME` ranks."""
    return recipe_dir() / "zoos"


def model_card_template(name: str = "hf_tl") -> Path:
    """`model_cards/NAME.md` of the checkout, installed as the package data `hf_tl._model_cards`."""
    return _shipped("hf_tl._model_cards", "model_cards") / f"{name}.md"


def asset_path(relative: str) -> Path:
    """A file or folder under hf_tl/assets, as named by `${hf_tl.asset:...}` in a recipe."""
    root = PACKAGE_DIR / "assets"
    path = (root / relative).resolve()
    if root not in path.parents or not path.exists():
        raise RecipeError(f"asset '{relative}' does not exist under {root}.")
    return path
