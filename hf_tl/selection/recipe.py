"""The recipe `select` runs for each candidate: a `linear_probe` run's, so the feature store it fills is the one a
later `hf-tl train strategy.kind=linear_probe data.augment=none ...` on the same data and split finds.

Imports no torch: the command checks it before anything heavy loads.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from hf_tl.config.commands import SelectArgs
from hf_tl.config.recipe import (
    DataSection,
    ModelSection,
    OutputSection,
    Recipe,
    StrategySection,
    TrainingSection,
    with_overrides,
)


def candidate_recipe(model: str, args: SelectArgs, work_dir: Path) -> Recipe:
    """The `linear_probe` recipe whose feature store holds this candidate's features (augment none: one view)."""
    return Recipe(
        name="select",
        model=ModelSection(name=model, trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle),
        strategy=StrategySection(kind="linear_probe"),
        data=data_section(args),
        training=TrainingSection(
            epochs=1,
            batch_size=args.batch_size,
            precision=args.precision,
            seed=args.seed,
            cache_features="true",
            cache_storage="disk",
        ),
        output=OutputSection(dir=str(work_dir)),
    )


def data_section(args: SelectArgs) -> DataSection:
    """The data as `select` reads it: its data keys are DataSection's own (`same_option`), copied by name, and one
    view of each image (augment none). The top-k study carries the same keys, so its sweep reads the same split."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(DataSection) if hasattr(args, f.name)}
    return DataSection(**given, augment="none")


def check_select_args(args: SelectArgs, model: str, overrides: list[str]) -> None:
    """The data keys as a training run checks them (val_fraction, splits, ...), and the fine-tunings' overrides:
    exit 2 before any model loads."""
    with_overrides(candidate_recipe(model, args, Path(".")), overrides)
