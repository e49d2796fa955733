"""Where each family keeps its blocks, its final norm and its head(s).

This is the single source of that knowledge: strategies, and later the feature cache and
the CKA analysis, read it through `layout(model)`. For transformers' own families a small
table lists candidate paths, checked against the loaded model because transformers renames
modules between versions (v5 moved ViT's `encoder.layer` to `layers`). timm models, loaded
through transformers' timm wrapper, describe themselves: `group_matcher` gives their stages
and blocks, `get_classifier` their head. Only where timm's grouping differs from Malpure et
al. 2021 §3.3 (CaiT) does a table entry override it.
"""

from __future__ import annotations

from dataclasses import dataclass

from timm.models import group_parameters
from torch import nn

from hf_tl.errors import HfTlError, RecipeError
from hf_tl.models.mlp_head_code import MODEL_TYPE_PREFIX
from hf_tl.models.module_tree import covering, under

TIMM_PREFIX = "timm_model."
TIMM_MODEL_TYPE = "timm_wrapper"  # every timm model, through transformers' wrapper: it describes itself
# LoRA's default targets: the attention's query and value projections under every name they go by
# (transformers 4, transformers 5, timm fused and split); CNNs take their convolutions instead.
QUERY_VALUE = ("q_proj", "v_proj", "query", "value", "qkv", "q", "v")


@dataclass(frozen=True)
class FamilySpec:
    """Candidate paths, the first present wins. `a+b` joins two lists; `*` walks every stage."""

    units: tuple[str, ...]
    norm: tuple[str, ...]
    heads: tuple[str, ...] = ()
    blocks: tuple[str, ...] = ()  # the finer unit (strategy.unit=block); empty: the same as units


FAMILIES: dict[str, FamilySpec] = {
    "vit": FamilySpec(units=("vit.layers", "vit.encoder.layer"), norm=("vit.layernorm",), heads=("classifier",)),
    "deit": FamilySpec(
        units=("deit.layers", "deit.encoder.layer"),
        norm=("deit.layernorm",),
        heads=("classifier", "cls_classifier", "distillation_classifier"),
    ),
    "swin": FamilySpec(units=("swin.encoder.layers.*.blocks",), norm=("swin.layernorm",), heads=("classifier",)),
    "convnext": FamilySpec(
        units=("convnext.encoder.stages",),
        blocks=("convnext.encoder.stages.*.layers",),
        norm=("convnext.layernorm",),
        heads=("classifier",),
    ),
    "resnet": FamilySpec(
        units=("resnet.encoder.stages",), blocks=("resnet.encoder.stages.*.layers",), norm=(), heads=("classifier",)
    ),
    "bit": FamilySpec(
        units=("bit.encoder.stages",),
        blocks=("bit.encoder.stages.*.layers",),
        norm=("bit.norm",),
        heads=("classifier",),
    ),
}
# timm architectures (by name prefix) whose group_matcher does not give Malpure's unit.
TIMM_OVERRIDES: dict[str, FamilySpec] = {
    # timm groups each class-attention block with a self-attention block; the paper trains the last one alone.
    "cait": FamilySpec(units=(f"{TIMM_PREFIX}blocks+{TIMM_PREFIX}blocks_token_only",), norm=(f"{TIMM_PREFIX}norm",)),
}

Unit = tuple[str, ...]


def model_types() -> list[str]:
    """The `config.model_type`s whose blocks `layout` finds: each needs an MLP-head class in mlp_head_code."""
    return [*FAMILIES, TIMM_MODEL_TYPE]


@dataclass(frozen=True)
class Layout:
    """Module names in one loaded model; units and blocks in forward order, each a tuple of names."""

    family: str
    units: list[Unit]  # Malpure's unit: a transformer block, a Swin block, a CNN stage
    blocks: list[Unit]  # one block, also inside a CNN stage
    norm: list[str]
    heads: list[str]
    lora_targets: list[str]

    def trailing(self, unit: str, k: int) -> list[str]:
        """Module names of the last `k` units (`unit` is 'stage' or 'block')."""
        units = self.units if unit == "stage" else self.blocks
        if k > len(units):
            raise RecipeError(
                f"strategy.blocks={k}, but this {self.family} model has {len(units)} units of kind "
                f"strategy.unit={unit}; choose 1 to {len(units)}."
            )
        return [name for group in units[-k:] for name in group]


def family_of(model: nn.Module) -> str:
    config = model.config
    family = config.model_type.removeprefix(MODEL_TYPE_PREFIX)  # a reloaded MLP-head checkpoint
    return f"timm:{config.architecture}" if family == TIMM_MODEL_TYPE else family


def layout(model: nn.Module) -> Layout:
    family = family_of(model)
    modules = dict(model.named_modules())
    if family.startswith("timm:"):
        units, blocks, norm, heads = _timm_parts(model, family.removeprefix("timm:"), modules)
    else:
        spec = FAMILIES.get(family)
        if spec is None:
            raise HfTlError(
                f"hf_tl does not know where the blocks of model type '{family}' are. Known families: "
                f"{', '.join(sorted(FAMILIES))} and timm models. Use strategy.kind=full instead."
            )
        units = _find_units(spec.units, modules, family)
        blocks = _find_units(spec.blocks, modules, family) if spec.blocks else units
        norm = [p for p in spec.norm if p in modules]
        heads = [p for p in spec.heads if p in modules]
    return Layout(family, units, blocks, norm, heads, _lora_targets(modules, units, heads))


def convolutional(model: nn.Module) -> bool:
    """Whether the blocks are convolutions (a CNN), not attention over patch tokens."""
    modules = dict(model.named_modules())
    names = [name for unit in layout(model).units for name in unit]
    return any(isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1) for n in names for m in modules[n].modules())


def _find_units(candidates: tuple[str, ...], modules: dict[str, nn.Module], family: str) -> list[Unit]:
    for path in candidates:
        parts = [_expand(p, modules) for p in path.split("+")]
        if all(parts):
            return [(name,) for part in parts for name in part]
    raise HfTlError(f"none of {candidates} is a block list in this {family} model; transformers may have renamed it.")


def _expand(path: str, modules: dict[str, nn.Module]) -> list[str]:
    """Names of the members of the module list at `path`, walking `*` over every stage."""
    if "*" in path:
        outer, _, rest = path.partition(".*.")
        stages = modules.get(outer)
        if not isinstance(stages, (nn.ModuleList, nn.Sequential)):
            return []
        return [name for i in range(len(stages)) for name in _expand(f"{outer}.{i}.{rest}", modules)]
    found = modules.get(path)
    return [f"{path}.{i}" for i in range(len(found))] if isinstance(found, (nn.ModuleList, nn.Sequential)) else []


def _timm_parts(model: nn.Module, architecture: str, modules: dict[str, nn.Module]):
    inner = model.timm_model
    heads = _timm_heads(inner)
    override = next((spec for prefix, spec in TIMM_OVERRIDES.items() if architecture.startswith(prefix)), None)
    if override:
        units = _find_units(override.units, modules, architecture)
        return units, units, [p for p in override.norm if p in modules], heads
    units, norm = _timm_groups(inner, heads, coarse=True)
    blocks, _ = _timm_groups(inner, heads, coarse=False)
    return units, blocks, norm, heads


def _timm_heads(inner: nn.Module) -> list[str]:
    classifier = inner.get_classifier()
    parts = classifier if isinstance(classifier, (tuple, list)) else (classifier,)
    names = {id(module): name for name, module in inner.named_modules()}
    return [TIMM_PREFIX + names[id(part)] for part in parts]


def _timm_groups(inner: nn.Module, heads: list[str], coarse: bool) -> tuple[list[Unit], list[str]]:
    """timm's parameter groups: the first is the stem, the head's group holds the final norm, units between."""
    local_heads = [h.removeprefix(TIMM_PREFIX) for h in heads]
    names = [n for n, _ in inner.named_parameters()]
    groups = list(group_parameters(inner, inner.group_matcher(coarse=coarse)).values())
    head_group = next(i for i, group in enumerate(groups) if any(under(n, local_heads) for n in group))

    def named(group: list[str]) -> list[str]:
        body = {n for n in group if not under(n, local_heads)}
        return [TIMM_PREFIX + name for name in covering(names, body)] if body else []

    units = [tuple(named(group)) for group in groups[1:head_group]]
    return [u for u in units if u], named(groups[head_group])


def _lora_targets(modules: dict[str, nn.Module], units: list[Unit], heads: list[str]) -> list[str]:
    """Leaf names inside the units: the query/value projections, or a CNN's (ungrouped) convolutions."""
    inside = {name: m for name, m in modules.items() if under(name, [n for u in units for n in u])}
    leaf = {name: name.rsplit(".", 1)[-1] for name in inside}
    attention = {leaf[n] for n, m in inside.items() if isinstance(m, nn.Linear) and leaf[n] in QUERY_VALUE}
    if attention:
        return sorted(attention)
    # peft matches leaf names model-wide: a number or a head's name would reach into the head.
    head_names = {h.rsplit(".", 1)[-1] for h in heads}
    layers = {
        leaf[n]
        for n, m in inside.items()
        if (isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1))
        and not leaf[n].isdigit()
        and leaf[n] not in head_names
    }
    return sorted(layers)
