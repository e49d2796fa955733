"""Which parameters train: each strategy's rule (its record in `hf_tl.strategies.registry`) applied to a model,
LoRA through peft, and the counts of what trains."""

from __future__ import annotations

import re
import types
from dataclasses import asdict, dataclass, replace

import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from hf_tl.config.recipe import Recipe, StrategySection
from hf_tl.errors import RecipeError
from hf_tl.models.families import Layout, layout
from hf_tl.models.loading import load_model, replace_heads
from hf_tl.models.module_tree import covering, under
from hf_tl.strategies import weight_standardized_lora
from hf_tl.strategies.registry import STRATEGIES

PEFT_PREFIX = "base_model.model."
_PEFT_COPY = re.compile(r"\.modules_to_save(\.default)?(?=\.|$)")


@dataclass
class Summary:
    """What a strategy leaves trainable; the papers differ on whether the head counts."""

    kind: str
    trainable: int
    total: int
    trainable_backbone: int
    trainable_head: int
    trainable_modules: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


def apply_strategy(model: nn.Module, cfg: StrategySection) -> tuple[nn.Module, Summary]:
    """The model to train (wrapped by peft for adapters) and what it trains."""
    parts = layout(model)
    if cfg.kind == "lora":
        model = _lora(model, parts, cfg)
    else:
        names = [n for n, _ in model.named_parameters()]
        chosen = STRATEGIES[cfg.kind].freezing(names, parts, cfg)  # the rule of the strategy's record
        for name, param in model.named_parameters():
            param.requires_grad_(name in chosen)
    keep_frozen_norms_in_eval(model)
    return model, summarize(model, cfg.kind, parts.heads)


def keep_frozen_norms_in_eval(model: nn.Module) -> None:
    """A BatchNorm not wholly trained keeps its running statistics when the Trainer calls train()."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not all(
            p.requires_grad for p in module.parameters()
        ):
            module.train = types.MethodType(_always_eval, module)
            module.eval()


def _always_eval(module: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(module, False)


def _lora(model: nn.Module, parts: Layout, cfg: StrategySection) -> nn.Module:
    targets = list(cfg.target_modules) or parts.lora_targets
    if not targets:
        raise RecipeError(f"no default LoRA targets for family '{parts.family}'; set strategy.target_modules=[...].")
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in names]
    if missing:
        raise RecipeError(
            f"strategy.target_modules {missing} match no module of this {parts.family} model; "
            f"its default targets are {parts.lora_targets}."
        )
    batch_norms = sorted(
        {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    )
    config = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        modules_to_save=parts.heads + batch_norms,  # BatchNorm statistics must travel with the adapter
    )
    return get_peft_model(model, weight_standardized_lora.register(config))


def summarize(model: nn.Module, kind: str, heads: list[str]) -> Summary:
    params = {_canonical(n): p for n, p in model.named_parameters() if ".original_module." not in n}
    trainable = {n for n, p in params.items() if p.requires_grad}
    head = sum(params[n].numel() for n in trainable if under(n, heads))
    n_trainable = sum(params[n].numel() for n in trainable)
    return Summary(
        kind=kind,
        trainable=n_trainable,
        total=sum(p.numel() for p in params.values()),
        trainable_backbone=n_trainable - head,
        trainable_head=head,
        trainable_modules=covering(params, trainable),
    )


def _canonical(name: str) -> str:
    """A parameter or module name as in the bare model, whether or not peft wraps it."""
    return _PEFT_COPY.sub("", name.removeprefix(PEFT_PREFIX))


DEFAULT_NUM_LABELS = 10  # `hf-tl params` counts a head for this many classes unless model.num_labels says


def count_parameters(recipe: Recipe) -> Summary:
    """What `recipe` trains, from the config alone: the model is built on the meta device, with no weights."""
    with torch.device("meta"):
        model = load_model(replace(recipe.model, weights="none"))
        labels = [str(i) for i in range(recipe.model.num_labels or DEFAULT_NUM_LABELS)]
        replace_heads(model, labels, recipe.model.head)
        _, summary = apply_strategy(model, recipe.strategy)
    return summary
