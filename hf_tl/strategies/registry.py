"""Every `strategy.kind`, one record each, with its freezing rule: a new strategy is one entry in this file.

The recipe's choices, the freezing, the feature cache and the model card all read these records. The
rules work on parameter names alone (`hf_tl.models.module_tree`), so this module imports nothing heavy:
`hf_tl.config.recipe` reads it, and a recipe must check fast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING

from hf_tl.errors import RecipeError
from hf_tl.models.module_tree import under

if TYPE_CHECKING:
    from hf_tl.config.recipe import StrategySection
    from hf_tl.models.families import Layout

# A rule: the parameter names of the model, its blocks map and the recipe's strategy section -> the names that train.
Rule = Callable[[list[str], "Layout", "StrategySection"], set[str]]


@dataclass(frozen=True)
class Strategy:
    """What hf_tl knows of one strategy.

    cacheable: whether the frozen part is a prefix of the model, so `training.cache_features` can run it once.
    card_text: the model card's sentence on what trains, formatted with the recipe's `strategy` section.
    freezing: the rule choosing the trainable parameters; None where the strategy adds parameters instead
        (lora: peft adapters beside the frozen backbone).
    """

    name: str
    cacheable: bool
    card_text: str
    freezing: Rule | None


def full(names: list[str], parts: Layout, cfg: StrategySection) -> set[str]:
    return set(names)


def linear_probe(names: list[str], parts: Layout, cfg: StrategySection) -> set[str]:
    return {n for n in names if under(n, parts.heads)}


def last_block(names: list[str], parts: Layout, cfg: StrategySection) -> set[str]:
    """Malpure et al. 2021 §3.3: the last unit, the final norm and the head(s)."""
    return {n for n in names if under(n, parts.trailing(cfg.unit, 1) + parts.norm + parts.heads)}


def last_k(names: list[str], parts: Layout, cfg: StrategySection) -> set[str]:
    return {n for n in names if under(n, parts.trailing(cfg.unit, cfg.blocks) + parts.norm + parts.heads)}


def bitfit(names: list[str], parts: Layout, cfg: StrategySection) -> set[str]:
    return {n for n in names if n.rsplit(".", 1)[-1] == "bias" or under(n, parts.heads)}


def custom(names: list[str], parts: Layout, cfg: StrategySection) -> set[str]:
    if not cfg.trainable:
        raise RecipeError(
            "strategy.kind=custom needs strategy.trainable=[glob, ...], e.g. ['*.layers.11.*', 'classifier.*']."
        )
    chosen: set[str] = set()
    for pattern in cfg.trainable:
        matched = {n for n in names if fnmatchcase(n, pattern)}
        if not matched:
            raise RecipeError(
                f"strategy.trainable pattern '{pattern}' matches no parameter. Parameter names look like: "
                f"{', '.join(names[:3])}, ..., {', '.join(names[-3:])} (list them with hf-tl params)."
            )
        chosen |= matched
    if not any(under(n, parts.heads) for n in chosen):
        raise RecipeError(
            f"strategy.trainable leaves the head frozen, but it is freshly initialised and would predict at random. "
            f"Add a pattern for it: {', '.join(f'{h}.*' for h in parts.heads)}."
        )
    return chosen


def _registry(*strategies: Strategy) -> dict[str, Strategy]:
    return {strategy.name: strategy for strategy in strategies}


STRATEGIES: dict[str, Strategy] = _registry(
    Strategy("full", cacheable=False, card_text="every parameter trains.", freezing=full),
    Strategy(
        "linear_probe",
        cacheable=True,
        card_text="only the new head trains; the backbone is frozen.",
        freezing=linear_probe,
    ),
    Strategy(
        "last_block",
        cacheable=True,
        card_text="the last block, the final norm and the new head train (Malpure et al. 2021, section 3.3); "
        "the rest of the backbone is frozen.",
        freezing=last_block,
    ),
    Strategy(
        "last_k",
        cacheable=True,
        card_text="the last {blocks} units ({unit}s), the final norm and the new head train; the rest is frozen.",
        freezing=last_k,
    ),
    Strategy(
        "lora",
        cacheable=False,
        card_text="LoRA adapters (peft, rank {r}) train beside the frozen backbone, with the new head; the adapters "
        "are merged into these weights.",
        freezing=None,
    ),
    Strategy(
        "bitfit",
        cacheable=False,
        card_text="every bias and the new head train (BitFit); the other weights are frozen.",
        freezing=bitfit,
    ),
    Strategy(
        "custom",
        cacheable=True,
        card_text="the parameters matching the recipe's `strategy.trainable` globs train.",
        freezing=custom,
    ),
)
