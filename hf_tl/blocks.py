"""Where each family keeps its blocks, its final norm and its head(s).

This table is the single source of that knowledge: strategies, and later the feature
cache and the CKA analysis, read it through `layout(model)`. Paths are candidates,
checked against the loaded model, because transformers renames modules between
versions (v5 moved ViT's `encoder.layer` to `layers`).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from hf_tl.errors import HfTlError
from hf_tl.mlp_head_code import MODEL_TYPE_PREFIX


@dataclass(frozen=True)
class FamilySpec:
    """Candidate paths; `*` in a blocks path walks every stage, in order."""

    blocks: tuple[str, ...]
    norm: tuple[str, ...]
    heads: tuple[str, ...]
    lora_targets: tuple[str, ...] = ()


FAMILIES: dict[str, FamilySpec] = {
    "vit": FamilySpec(
        blocks=("vit.layers", "vit.encoder.layer"),
        norm=("vit.layernorm",),
        heads=("classifier",),
        lora_targets=("q_proj", "v_proj", "query", "value"),
    ),
    "deit": FamilySpec(
        blocks=("deit.layers", "deit.encoder.layer"),
        norm=("deit.layernorm",),
        heads=("classifier", "cls_classifier", "distillation_classifier"),
        lora_targets=("q_proj", "v_proj", "query", "value"),
    ),
    "swin": FamilySpec(
        blocks=("swin.encoder.layers.*.blocks",),
        norm=("swin.layernorm",),
        heads=("classifier",),
        lora_targets=("q_proj", "v_proj", "query", "value"),
    ),
    "convnext": FamilySpec(
        blocks=("convnext.encoder.stages",),
        norm=("convnext.layernorm",),
        heads=("classifier",),
        lora_targets=("pwconv1", "pwconv2"),
    ),
    "resnet": FamilySpec(
        blocks=("resnet.encoder.stages",),
        norm=(),
        heads=("classifier",),
        lora_targets=("convolution",),
    ),
}


@dataclass(frozen=True)
class Layout:
    """Module names in one loaded model: `blocks` in forward order."""

    family: str
    blocks: list[str]
    norm: list[str]
    heads: list[str]
    lora_targets: list[str]


def layout(model: nn.Module) -> Layout:
    family = model.config.model_type.removeprefix(MODEL_TYPE_PREFIX)  # a reloaded MLP-head checkpoint
    spec = FAMILIES.get(family)
    if spec is None:
        raise HfTlError(
            f"hf_tl does not know where the blocks of model type '{family}' are. "
            f"Known families: {', '.join(sorted(FAMILIES))}. Use strategy.kind=full instead."
        )
    modules = dict(model.named_modules())
    blocks = next((found for path in spec.blocks if (found := _expand(path, modules))), None)
    if not blocks:
        raise HfTlError(
            f"none of {spec.blocks} is a block list in this {family} model; transformers may have renamed it."
        )
    leaf_names = {name.rsplit(".", 1)[-1] for name in modules}
    return Layout(
        family=family,
        blocks=blocks,
        norm=[p for p in spec.norm if p in modules],
        heads=[p for p in spec.heads if p in modules],
        lora_targets=[t for t in spec.lora_targets if t in leaf_names],
    )


def _expand(path: str, modules: dict[str, nn.Module]) -> list[str]:
    """Names of the members of the ModuleList at `path`, walking `*` over every stage."""
    if "*" in path:
        outer, _, rest = path.partition(".*.")
        stages = modules.get(outer)
        if not isinstance(stages, nn.ModuleList):
            return []
        return [name for i in range(len(stages)) for name in _expand(f"{outer}.{i}.{rest}", modules)]
    found = modules.get(path)
    return [f"{path}.{i}" for i in range(len(found))] if isinstance(found, nn.ModuleList) else []
