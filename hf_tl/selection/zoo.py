"""Zoos: named lists of checkpoints that `hf-tl select` ranks on a user's data.

A zoo file (`recipes/zoos/NAME.yaml`, or any YAML path) holds a `description` and `models`, a list of
`{id, family, note}`: the Hub id (or `${hf_tl.asset:PATH}`), the family as hf_tl names it
(`config.model_type`, or `timm:ARCH` for timm checkpoints, as `hf_tl.models.families.family_of` does), and a
one-line note. Zoos are data, read with the recipes' safe loader; this module loads no model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hf_tl.config.recipe import did_you_mean, find_yaml, read_mapping
from hf_tl.config.resources import zoo_dir
from hf_tl.errors import RecipeError
from hf_tl.studies.study import with_assets

ZOO_KEYS = ("description", "models")
CANDIDATE_KEYS = ("id", "family", "note")


@dataclass(frozen=True)
class Candidate:
    """One checkpoint of a zoo."""

    id: str
    family: str
    note: str


@dataclass(frozen=True)
class Zoo:
    name: str
    description: str
    candidates: tuple[Candidate, ...]

    @property
    def ids(self) -> list[str]:
        return [c.id for c in self.candidates]


def available_zoos() -> list[str]:
    """The shipped zoos, by name."""
    return sorted(p.stem for p in zoo_dir().glob("*.yaml"))


def find_zoo(name_or_path: str) -> Path:
    """A shipped zoo by name, or a zoo YAML by path."""
    return find_yaml(name_or_path, zoo_dir(), "zoo", "or give a path to a zoo .yaml file.")


def load_zoo(name_or_path: str) -> Zoo:
    """Read and check a zoo: known keys only, every entry complete, no checkpoint listed twice."""
    path = find_zoo(name_or_path)
    try:
        raw = with_assets(read_mapping(path, "zoo", "(description, models)"))
    except RecipeError as e:  # an interpolation, or a missing asset: say which file
        raise e if str(path) in str(e) else RecipeError(f"zoo '{path}': {e}") from None
    _check_keys(raw, ZOO_KEYS, path, "")
    models = raw.get("models")
    if not isinstance(models, list) or not models:
        raise RecipeError(f"zoo '{path}': 'models' must be a non-empty list of {{id, family, note}}.")
    candidates = tuple(_candidate(entry, f"models[{i}]", path) for i, entry in enumerate(models))
    _check_unique(candidates, path)
    return Zoo(path.stem, _text(raw, "description", path, "", one_line=False), candidates)


def candidates_for(models: list[str], zoo: str | None) -> list[Candidate]:
    """`hf-tl select`'s candidates, from models=[...] or zoo=NAME, each once."""
    if models and zoo:
        raise RecipeError("give models=[...] or zoo=NAME, not both.")
    if zoo:
        return list(load_zoo(zoo).candidates)
    if not models:
        raise RecipeError(
            "no candidates: give models=[id1,id2,...] (Hub ids or local folders) or zoo=NAME "
            f"(shipped: {', '.join(available_zoos())})."
        )
    repeated = sorted({m for m in models if models.count(m) > 1})
    if repeated:
        raise RecipeError(f"models lists {', '.join(repeated)} more than once.")
    return [Candidate(m, "", "") for m in models]


def _candidate(entry: Any, where: str, path: Path) -> Candidate:
    if not isinstance(entry, dict):
        raise RecipeError(f"zoo '{path}': {where} must be a mapping with keys {', '.join(CANDIDATE_KEYS)}.")
    _check_keys(entry, CANDIDATE_KEYS, path, f"{where}.")
    return Candidate(*(_text(entry, key, path, f"{where}.") for key in CANDIDATE_KEYS))


def _check_keys(node: dict, valid: tuple[str, ...], path: Path, where: str) -> None:
    for key in node:
        if key not in valid:
            raise RecipeError(
                f"zoo '{path}': unknown key '{where}{key}'.{did_you_mean(str(key), valid)} "
                f"Valid keys there: {', '.join(valid)}."
            )


def _text(node: dict, key: str, path: Path, where: str, one_line: bool = True) -> str:
    """A required string; a candidate's fields go into one table row each, so they are one line."""
    value = node.get(key)
    if not isinstance(value, str) or not value.strip():
        raise RecipeError(f"zoo '{path}': key '{where}{key}' is required and must be a non-empty string.")
    if one_line and "\n" in value.strip():
        raise RecipeError(f"zoo '{path}': key '{where}{key}' must be one line (use YAML's '>-' to fold it).")
    return value.strip()


def _check_unique(candidates: tuple[Candidate, ...], path: Path) -> None:
    first: dict[str, int] = {}
    for i, candidate in enumerate(candidates):
        if candidate.id in first:
            raise RecipeError(
                f"zoo '{path}': '{candidate.id}' is listed twice (models[{first[candidate.id]}] and models[{i}])."
            )
        first[candidate.id] = i
