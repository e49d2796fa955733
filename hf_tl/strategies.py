"""Which parameters train: one small function per `strategy.kind`, over the blocks map."""

from __future__ import annotations

import re
import types
from collections.abc import Callable
from dataclasses import asdict, dataclass

from peft import LoraConfig, get_peft_model
from torch import nn

from hf_tl.blocks import Layout, layout
from hf_tl.errors import RecipeError
from hf_tl.recipe import StrategySection

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


def _full(parts: Layout, cfg: StrategySection) -> list[str]:
    return [""]


def _linear_probe(parts: Layout, cfg: StrategySection) -> list[str]:
    return parts.heads


def _last_block(parts: Layout, cfg: StrategySection) -> list[str]:
    return parts.blocks[-1:] + parts.norm + parts.heads


FREEZING: dict[str, Callable[[Layout, StrategySection], list[str]]] = {
    "full": _full,
    "linear_probe": _linear_probe,
    "last_block": _last_block,
}


def apply_strategy(model: nn.Module, cfg: StrategySection) -> tuple[nn.Module, Summary]:
    """The model to train (wrapped by peft for adapters) and what it trains."""
    parts = layout(model)
    if cfg.kind == "lora":
        model = _lora(model, parts, cfg)
    else:
        prefixes = FREEZING[cfg.kind](parts, cfg)
        for name, param in model.named_parameters():
            param.requires_grad_(_under(name, prefixes))
    keep_frozen_norms_in_eval(model)
    return model, summarize(model, cfg.kind, parts.heads)


def keep_frozen_norms_in_eval(model: nn.Module) -> None:
    """A frozen BatchNorm must not update its running statistics when the Trainer calls train()."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
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
        raise RecipeError(f"strategy.target_modules {missing} match no module of this {parts.family} model.")
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
    return get_peft_model(model, config)


def summarize(model: nn.Module, kind: str, heads: list[str]) -> Summary:
    params = {_canonical(n): p for n, p in model.named_parameters() if ".original_module." not in n}
    trainable = {n for n, p in params.items() if p.requires_grad}
    head = sum(params[n].numel() for n in trainable if _under(n, heads))
    n_trainable = sum(params[n].numel() for n in trainable)
    return Summary(
        kind=kind,
        trainable=n_trainable,
        total=sum(p.numel() for p in params.values()),
        trainable_backbone=n_trainable - head,
        trainable_head=head,
        trainable_modules=trainable_modules(model),
    )


def trainable_modules(model: nn.Module) -> list[str]:
    """The shortest module names whose parameters all train ("" is the whole model)."""
    found: list[str] = []
    for name, module in model.named_modules():
        if any(f == "" or name.startswith(f"{f}.") for f in found):
            continue
        params = list(module.parameters())
        if params and all(p.requires_grad for p in params):
            found.append(name)
    return [_canonical(f) for f in found]


def _canonical(name: str) -> str:
    """A parameter or module name as in the bare model, whether or not peft wraps it."""
    return _PEFT_COPY.sub("", name.removeprefix(PEFT_PREFIX))


def _under(param_name: str, prefixes: list[str]) -> bool:
    return any(p == "" or param_name == p or param_name.startswith(f"{p}.") for p in prefixes)
