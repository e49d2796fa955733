"""Studies: a paper's comparison as data. Backbones x datasets x strategies, each cell one hf_tl recipe.

A study file (`recipes/studies/NAME.yaml`) gives the settings every cell shares (`base`, recipe
sections), then its backbones, datasets and strategies, each with the recipe keys it sets. A
cell's recipe is base, then the dataset's, the strategy's and the backbone's keys, in that order,
so a backbone that needs its own reading of "last block" overrides the study's strategy. The
paper's figures live beside it in a CSV file (`figures:`), which the report reads: data, not code.
"""

from __future__ import annotations

import csv
import dataclasses
import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, OmegaConf, errors

from hf_tl.config.recipe import _ASSET, check_options, did_you_mean, find_yaml, option, read_mapping, type_name
from hf_tl.config.resources import asset_path, study_dir
from hf_tl.errors import RecipeError

TABLE_LAYOUTS = ("malpure", "zhou")  # the report table's shapes (not a model's blocks layout)
TYPES = ("CNN", "transformer")
FIGURE_COLUMNS = ("backbone", "dataset", "strategy", "paper_val_accuracy", "paper_trainable_parameters", "note")
# Numbers, where given: the paper's accuracy (%) and count, and hf_tl's count of the same cell (`counted_as` names
# which of `hf-tl params`' counts the paper's figure is: trainable, or trainable_backbone when it leaves the head out).
NUMBER_COLUMNS = ("paper_val_accuracy", "paper_trainable_parameters", "hf_tl_trainable_parameters")
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # a cell's folder name is built from keys


@dataclass
class _Entry:
    """What every entry of a study's backbones, datasets and strategies has."""

    key: str = option(MISSING, "Short name used in cell folders and only=, e.g. deit_b_distilled, cifar10, linear.")
    name: Optional[str] = option(None, "Display name in the report; default the key.")
    recipe: dict[str, Any] = option({}, "Recipe keys for this entry's cells, as recipe sections.")


@dataclass
class BackboneEntry(_Entry):
    model: str = option(MISSING, "Hub id or local directory of the checkpoint (model.name).")
    type: str = option(MISSING, "Architecture family, for the report's colours.", TYPES)
    paper_name: Optional[str] = option(None, "The paper's name for this backbone, where ours differs.")
    note: Optional[str] = option(None, "How the chosen checkpoint differs from the paper's, if it does.")


@dataclass
class DatasetEntry(_Entry):
    dataset: str = option(MISSING, "Hub id or local directory (data.dataset).")
    task: Optional[str] = option(None, "The paper's task family, e.g. fine-grained.")
    note: Optional[str] = option(None, "What is known, and not, about this Hub copy.")


@dataclass
class StrategyEntry(_Entry):
    pass


@dataclass
class StudyFile:
    title: str = option(MISSING, "What the study compares, for the report's heading.")
    paper: str = option(MISSING, "The paper or repository it reproduces, and where its figures are.")
    layout: str = option("malpure", "The report's table: one row per run, or a backbone x dataset grid.", TABLE_LAYOUTS)
    figures: Optional[str] = option(None, "CSV of the paper's figures, beside the study file.")
    base: dict[str, Any] = option({}, "Recipe keys every cell shares, as recipe sections.")
    backbones: list[BackboneEntry] = option([], "The backbones compared.")
    datasets: list[DatasetEntry] = option([], "The datasets each backbone is fine-tuned on.")
    strategies: list[StrategyEntry] = option([], "The strategies each backbone is fine-tuned with.")


_SECTION_OF = {BackboneEntry: "backbones", DatasetEntry: "datasets", StrategyEntry: "strategies"}


@dataclass(frozen=True)
class Cell:
    """One run of a study: a backbone on a dataset under a strategy."""

    backbone: BackboneEntry
    dataset: DatasetEntry
    strategy: StrategyEntry

    @property
    def id(self) -> str:
        return f"{self.backbone.key}__{self.dataset.key}__{self.strategy.key}"

    def recipe(self, base: dict) -> dict:
        """The cell's recipe as sections: base, then dataset, strategy and backbone keys."""
        merged = OmegaConf.merge(
            base,
            {"data": {"dataset": self.dataset.dataset}},
            self.dataset.recipe,
            self.strategy.recipe,
            {"model": {"name": self.backbone.model}},
            self.backbone.recipe,
        )
        return OmegaConf.to_container(merged)


@dataclass
class Study:
    name: str
    path: Path
    spec: StudyFile
    figures: list[dict] = field(default_factory=list)

    @property
    def cells(self) -> list[Cell]:
        s = self.spec
        return [Cell(b, d, t) for b in s.backbones for d in s.datasets for t in s.strategies]

    def to_dict(self) -> dict:
        """The study as written into a sweep folder, so its report needs nothing else."""
        return {"name": self.name, "path": str(self.path), **dataclasses.asdict(self.spec), "figure_rows": self.figures}


def find_study(name_or_path: str) -> Path:
    """A shipped study by name, or a study YAML by path."""
    return find_yaml(name_or_path, study_dir(), "study", "or give a path to a study .yaml file.")


def load_study(name_or_path: str) -> Study:
    """Read, type-check and cross-check a study file and its figures."""
    path = find_study(name_or_path)
    raw = with_assets(read_mapping(path, "study", "(title, paper, base, backbones, ...)"))
    try:
        spec: StudyFile = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(StudyFile), raw))
    except errors.MissingMandatoryValue as e:
        raise RecipeError(f"study '{path}': key '{e.full_key}' is required.") from None
    except (errors.ConfigKeyError, errors.ValidationError) as e:
        raise RecipeError(f"study '{path}': {_schema_message(e)}") from None
    _check(spec, path)
    study = Study(path.stem, path.resolve(), spec)
    if spec.figures:
        study.figures = read_figures(path.parent / spec.figures, study)
    return study


def with_assets(node: Any) -> Any:
    """A study's values with each `${hf_tl.asset:PATH}` (the one interpolation read_mapping lets through) replaced
    by the shipped file's path, at any depth: OmegaConf itself knows no `hf_tl.asset` resolver."""
    if OmegaConf.is_config(node):
        node = OmegaConf.to_container(node, resolve=False)
    if isinstance(node, dict):
        return {key: with_assets(value) for key, value in node.items()}
    if isinstance(node, list):
        return [with_assets(value) for value in node]
    if isinstance(node, str) and (match := _ASSET.fullmatch(node)):
        return str(asset_path(match.group(1)))
    return node


def _schema_message(e: errors.OmegaConfBaseException) -> str:
    """OmegaConf names the entry's class but not its place in a list: say which section the key is in."""
    owner = e.object_type if dataclasses.is_dataclass(e.object_type) else StudyFile
    where = _SECTION_OF.get(owner, "")
    leaf = str(e.full_key).rsplit(".", 1)[-1]
    if isinstance(e, errors.ConfigKeyError):
        valid = [f.name for f in dataclasses.fields(owner)]
        return (
            f"unknown key '{leaf}'{f' in an entry of {where}' if where else ''}.{did_you_mean(leaf, valid)} "
            f"Valid keys there: {', '.join(valid)}."
        )
    field_type = {f.name: f.type for f in dataclasses.fields(owner)}.get(leaf, "")
    return (
        f"key '{leaf}'{f' in an entry of {where}' if where else ''} got {e.value!r}, "
        f"which is not a valid {type_name(field_type) or 'value'}."
    )


def _check(spec: StudyFile, path: Path) -> None:
    check_options(spec, what=f"study '{path.name}' key")
    for section in ("backbones", "datasets", "strategies"):
        entries = getattr(spec, section)
        if not entries:
            raise RecipeError(f"study '{path}' lists no {section}; it needs at least one.")
        seen: set[str] = set()
        for i, entry in enumerate(entries):
            check_options(entry, f"{section}[{i}].", what=f"study '{path.name}' key")
            if not _KEY.match(entry.key) or "__" in entry.key:
                raise RecipeError(
                    f"study '{path}': {section}[{i}].key '{entry.key}' must be letters, digits, '.', '-' or '_' "
                    "(no '__', which separates a cell's parts)."
                )
            if entry.key in seen:
                raise RecipeError(f"study '{path}': {section} key '{entry.key}' appears twice.")
            seen.add(entry.key)


def read_figures(path: Path, study: Study) -> list[dict]:
    """The paper's figures, one CSV row per (backbone, dataset, strategy); empty cells mean 'not reported'."""
    if not path.is_file():
        raise RecipeError(f"study '{study.path}' names figures file '{path}', which does not exist.")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in FIGURE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise RecipeError(f"figures file '{path}' lacks the column(s) {missing}; it needs {list(FIGURE_COLUMNS)}.")
        rows = list(reader)
    keys = {
        "backbone": [b.key for b in study.spec.backbones],
        "dataset": [d.key for d in study.spec.datasets],
        "strategy": [s.key for s in study.spec.strategies],
    }
    figures = []
    for line, row in enumerate(rows, start=2):
        for column, valid in keys.items():
            if row[column] not in valid:
                raise RecipeError(
                    f"figures file '{path}' line {line}: {column} '{row[column]}' is not in the study."
                    f"{did_you_mean(row[column], valid)} Valid: {', '.join(valid)}."
                )
        figures.append({**row, **{c: _number(row[c], path, line, c) for c in NUMBER_COLUMNS if c in row}})
    return figures


def _number(text: str | None, path: Path, line: int, column: str) -> float | int | None:
    text = (text or "").strip().replace(",", "").replace("_", "")
    if not text:
        return None
    try:
        return int(text) if text.isdigit() else float(text)
    except ValueError:
        raise RecipeError(f"figures file '{path}' line {line}: {column} '{text}' is not a number.") from None


def figure_for(figures: list[dict], backbone: str, dataset: str, strategy: str) -> dict:
    """The figures row of one cell, or {} when the paper reports none."""
    return next(
        (r for r in figures if (r["backbone"], r["dataset"], r["strategy"]) == (backbone, dataset, strategy)), {}
    )


def select_cells(cells: list[Cell], only: list[str]) -> list[Cell]:
    """Cells matching `only`: each term is `backbone=GLOB`, `dataset=GLOB`, `strategy=GLOB`, or a bare GLOB,
    which applies to the first part it matches (backbone, dataset, strategy, then the cell id). Terms on the
    same part are alternatives; terms on different parts must all hold."""
    if not only:
        return cells
    names = {
        "backbone": list(dict.fromkeys(c.backbone.key for c in cells)),
        "dataset": list(dict.fromkeys(c.dataset.key for c in cells)),
        "strategy": list(dict.fromkeys(c.strategy.key for c in cells)),
        "cell": [c.id for c in cells],
    }
    chosen: dict[str, set[str]] = {part: set() for part in names}
    for term in only:
        part, _, pattern = term.rpartition("=")
        if part and part not in ("backbone", "dataset", "strategy"):
            raise RecipeError(f"only= term '{term}': '{part}' is not one of backbone, dataset, strategy.")
        for candidate in [part] if part else names:
            hits = {n for n in names[candidate] if fnmatchcase(n, pattern)}
            if hits:
                chosen[candidate] |= hits
                break
        else:
            pool = names[part] if part else [n for p in ("backbone", "dataset", "strategy") for n in names[p]]
            raise RecipeError(
                f"only= term '{pattern}' matches no {part or 'backbone, dataset, strategy or cell'}."
                f"{did_you_mean(pattern, pool)}\n"
                + "\n".join(f"  {p}s: {', '.join(sorted(names[p]))}" for p in ("backbone", "dataset", "strategy"))
            )

    def keys(cell: Cell) -> dict[str, str]:
        return {
            "backbone": cell.backbone.key,
            "dataset": cell.dataset.key,
            "strategy": cell.strategy.key,
            "cell": cell.id,
        }

    return [c for c in cells if all(not chosen[p] or keys(c)[p] in chosen[p] for p in chosen)]
