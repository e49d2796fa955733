"""Parameter groups for layer-wise learning-rate decay (BEiT, MAE, timm) and a head learning rate.

Depth comes from the families map: a timm model groups itself through timm's own
`param_groups_layer_decay` (its `group_matcher`); a transformers family is walked along
`layout(model).units` with timm's numbering (embeddings 0, block i at i+1, the final norm with the
last block, the head alone on top) and its weight-decay split, so the same architecture gets the
same learning rates whichever library it was loaded from. Each
group carries its own `lr`: transformers' schedulers (LambdaLR) scale every group's initial
learning rate by the same factor, so the ratios hold over the whole schedule.
"""

from __future__ import annotations

import fnmatch
from typing import Any

from peft import PeftModel
from timm.optim import param_groups_layer_decay
from torch import nn

from hf_tl.errors import HfTlError
from hf_tl.models.families import Unit, layout
from hf_tl.models.module_tree import under

# What timm's models list in `no_weight_decay()`, under transformers' names: tokens, position tables.
NO_WEIGHT_DECAY = ("*cls_token", "*distillation_token", "*mask_token", "*position_embeddings", "*relative_position_*")


def param_groups(
    model: nn.Module, lr: float, weight_decay: float, layer_decay: float | None, head_lr: float | None
) -> list[dict[str, Any]]:
    """The optimizer's groups over the trainable parameters, each with its `lr`, `lr_scale` and `weight_decay`.

    layer_decay=None scales nothing; head_lr=None leaves the head at lr times its (top) scale, which is lr.
    """
    base = model.get_base_model() if isinstance(model, PeftModel) else model  # its own names, LoRA layers inside
    parts = layout(base)
    decay = 1.0 if layer_decay is None else layer_decay
    if parts.family.startswith("timm:"):
        groups = _timm_groups(base.timm_model, weight_decay, decay)
    else:
        groups = _unit_groups(base, parts.units, parts.norm, weight_decay, decay)
    _check_complete(base, groups)
    head_params = {id(p) for name, p in base.named_parameters() if under(name, parts.heads)}
    return _with_lrs(groups, head_params, lr, head_lr)


def describe(groups: list[dict[str, Any]], layer_decay: float | None, head_lr: float | None) -> str:
    """The run's start line: how far the learning rate falls from the top trainable layer to the bottom one."""
    body = [g for g in groups if not g.get("head")]
    parts = []
    if layer_decay is not None and body:
        lrs = sorted({g["lr"] for g in body}, reverse=True)
        span = f"lr {lrs[0]:.2g} at the top ... {lrs[-1]:.2g} at the bottom" if len(lrs) > 1 else f"lr {lrs[0]:.2g}"
        parts.append(f"layer decay {layer_decay:g} over {len(lrs)} trainable layer(s) ({span})")
    if head_lr is not None:
        parts.append(f"head lr {head_lr:g}")
    return "hf_tl: " + "; ".join(parts)


def unit_layers(names: list[str], units: list[Unit], norm: list[str]) -> dict[str, int]:
    """Each parameter's layer: 0 before the first unit, i+1 in unit i, len(units)+1 after the last (the head).

    As timm's group_matchers do: the final norm goes with the last unit, and a parameter between two
    units (a Swin downsampling layer) with the next one. `names` in forward order.
    """
    layers, last_seen = {}, -1
    for name in names:
        unit = next((i for i, members in enumerate(units) if under(name, members)), None)
        if under(name, norm):
            layers[name] = len(units)
        elif unit is not None:
            last_seen = max(last_seen, unit)
            layers[name] = unit + 1
        elif last_seen < 0:
            layers[name] = 0
        elif last_seen == len(units) - 1:
            layers[name] = len(units) + 1
        else:
            layers[name] = last_seen + 2  # the next unit's layer
    return layers


def _timm_groups(inner: nn.Module, weight_decay: float, decay: float) -> list[dict[str, Any]]:
    no_weight_decay = getattr(inner, "no_weight_decay", lambda: set())()
    return param_groups_layer_decay(
        inner, weight_decay=weight_decay, no_weight_decay_list=no_weight_decay, layer_decay=decay
    )


def _unit_groups(
    model: nn.Module, units: list[Unit], norm: list[str], weight_decay: float, decay: float
) -> list[dict[str, Any]]:
    """timm's grouping (one group per layer and weight-decay kind, in parameter order) over the families map."""
    named = list(model.named_parameters())
    layers = unit_layers([name for name, _ in named], units, norm)
    top = len(units) + 1
    groups: dict[str, dict[str, Any]] = {}
    for name, param in named:
        if not param.requires_grad:
            continue
        no_decay = param.ndim <= 1 or any(fnmatch.fnmatch(name, p) for p in NO_WEIGHT_DECAY)
        key = f"layer_{layers[name]}_{'no_decay' if no_decay else 'decay'}"
        group = groups.setdefault(
            key,
            {
                "lr_scale": decay ** (top - layers[name]),
                "weight_decay": 0.0 if no_decay else weight_decay,
                "params": [],
            },
        )
        group["params"].append(param)
    return list(groups.values())


def _with_lrs(
    groups: list[dict[str, Any]], head_params: set[int], lr: float, head_lr: float | None
) -> list[dict[str, Any]]:
    """Each group's `lr`; with head_lr, the head's parameters split off into groups of their own at head_lr."""
    result = []
    for group in groups:
        body = [p for p in group["params"] if head_lr is None or id(p) not in head_params]
        head = [p for p in group["params"] if head_lr is not None and id(p) in head_params]
        if body:
            result.append({**group, "params": body, "lr": lr * group["lr_scale"]})
        if head:
            scale = head_lr / lr if lr else 1.0
            result.append({**group, "params": head, "lr": head_lr, "lr_scale": scale, "head": True})
    return result


def _check_complete(model: nn.Module, groups: list[dict[str, Any]]) -> None:
    """Every trainable parameter in exactly one group: one left out would silently not train."""
    grouped = [id(p) for g in groups for p in g["params"]]
    unique = set(grouped)
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in unique]
    if missing or len(grouped) != len(unique):
        raise HfTlError(f"layer-wise learning rates left out or repeated parameters ({missing[:3]}); use lr alone.")
