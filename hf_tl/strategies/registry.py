"""Every `strategy.kind`, one record each: the recipe's choices, the feature cache and the card read it here.

A new strategy is one entry below plus its freezing rule in `hf_tl.strategies.freezing`. This
module imports nothing heavy (no torch, no transformers): `hf_tl.config.recipe` reads it, and a
recipe must check fast. So a rule is named here, not imported; freezing.py resolves the names.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Strategy:
    """What hf_tl knows of one strategy.

    cacheable: whether the frozen part is a prefix of the model, so `training.cache_features` can run it once.
    card_text: the model card's sentence on what trains, formatted with the recipe's `strategy` section.
    freezing: the name of the rule in `hf_tl.strategies.freezing` choosing the trainable parameters;
        None where the strategy adds parameters instead (lora: peft adapters beside the frozen backbone).
    """

    name: str
    cacheable: bool
    card_text: str
    freezing: str | None


def _registry(*strategies: Strategy) -> dict[str, Strategy]:
    return {strategy.name: strategy for strategy in strategies}


STRATEGIES: dict[str, Strategy] = _registry(
    Strategy("full", cacheable=False, card_text="every parameter trains.", freezing="full"),
    Strategy(
        "linear_probe",
        cacheable=True,
        card_text="only the new head trains; the backbone is frozen.",
        freezing="linear_probe",
    ),
    Strategy(
        "last_block",
        cacheable=True,
        card_text="the last block, the final norm and the new head train (Malpure et al. 2021, section 3.3); "
        "the rest of the backbone is frozen.",
        freezing="last_block",
    ),
    Strategy(
        "last_k",
        cacheable=True,
        card_text="the last {blocks} units ({unit}s), the final norm and the new head train; the rest is frozen.",
        freezing="last_k",
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
        freezing="bitfit",
    ),
    Strategy(
        "custom",
        cacheable=True,
        card_text="the parameters matching the recipe's `strategy.trainable` globs train.",
        freezing="custom",
    ),
)
