"""Every family x every strategy: a few real training steps, then exactly the intended parameters moved.

The expected layout of each tiny model is written out by hand here, so this file checks the
blocks map as well as the strategies. Each cell trains through hf_tl's own Trainer, saves
through hf_tl's export, reloads with plain transformers (and the adapter with peft), and
compares logits with the model as it was in memory.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import pytest
import torch
from conftest import TINY_FAMILIES, saved_digits
from peft import PeftModel
from torch import nn
from transformers import AutoModelForImageClassification

from hf_tl.config.recipe import load_recipe
from hf_tl.models.module_tree import under
from hf_tl.runs.folder import ADAPTER_DIR, MODEL_DIR
from hf_tl.strategies.weight_standardized_lora import load_adapter
from hf_tl.training.export import save_final_model
from hf_tl.training.run import build_trainer

T = "timm_model."


@dataclass
class Family:
    units: list[list[str]]  # Malpure's units, in forward order
    norm: list[str]
    heads: list[str]
    lora: list[str]  # leaf names LoRA targets by default
    size: int
    blocks: list[list[str]] = field(default_factory=list)  # strategy.unit=block, where it differs

    @property
    def first_unit(self) -> str:
        return self.units[0][0]


# The expected layout of each of conftest's TINY_FAMILIES; a family added there without one here fails to collect.
FAMILIES = {
    "vit": Family([["vit.layers.0"], ["vit.layers.1"], ["vit.layers.2"]], ["vit.layernorm"], ["classifier"],
                  ["q_proj", "v_proj"], 16),
    "deit": Family([["deit.layers.0"], ["deit.layers.1"], ["deit.layers.2"]], ["deit.layernorm"],
                   ["cls_classifier", "distillation_classifier"], ["q_proj", "v_proj"], 16),
    "swin": Family([["swin.encoder.layers.0.blocks.0"], ["swin.encoder.layers.1.blocks.0"],
                    ["swin.encoder.layers.1.blocks.1"]], ["swin.layernorm"], ["classifier"], ["q_proj", "v_proj"], 32),
    "convnext": Family([["convnext.encoder.stages.0"], ["convnext.encoder.stages.1"]], ["convnext.layernorm"],
                       ["classifier"], ["pwconv1", "pwconv2"], 32,
                       blocks=[["convnext.encoder.stages.1.layers.0"], ["convnext.encoder.stages.1.layers.1"]]),
    "resnet": Family([["resnet.encoder.stages.0"], ["resnet.encoder.stages.1"]], [], ["classifier"],
                     ["convolution"], 16,
                     blocks=[["resnet.encoder.stages.1.layers.0"], ["resnet.encoder.stages.1.layers.1"]]),
    "bit": Family([["bit.encoder.stages.0"], ["bit.encoder.stages.1"]], ["bit.norm"], ["classifier"],
                  ["conv", "conv1", "conv2", "conv3"], 32,
                  blocks=[["bit.encoder.stages.1.layers.0"], ["bit.encoder.stages.1.layers.1"]]),
    "densenet": Family([[f"{T}features.denseblock1", f"{T}features.transition1"], [f"{T}features.denseblock2"]],
                       [f"{T}features.norm5"], [f"{T}classifier"], ["conv", "conv1", "conv2"], 32,
                       blocks=[[f"{T}features.denseblock2.denselayer1"], [f"{T}features.denseblock2.denselayer2"]]),
    "cait": Family([[f"{T}blocks.0"], [f"{T}blocks.1"], [f"{T}blocks_token_only.0"], [f"{T}blocks_token_only.1"]],
                   [f"{T}norm"], [f"{T}head"], ["q", "qkv", "v"], 32),
}  # fmt: skip
STRATEGIES = ["full", "linear_probe", "last_block", "last_k", "lora", "bitfit", "custom"]
CELLS = [(f, s) for f in TINY_FAMILIES for s in STRATEGIES] + [
    (f, "last_block:block") for f in TINY_FAMILIES if FAMILIES[f].blocks
]


def flatten(units: list[list[str]]) -> list[str]:
    return [name for unit in units for name in unit]


def overrides(family: Family, strategy: str) -> list[str]:
    kind, _, unit = strategy.partition(":")
    extra = [f"strategy.kind={kind}"]
    if unit:
        extra.append(f"strategy.unit={unit}")
    if kind == "last_k":
        extra.append("strategy.blocks=2")
    if kind == "custom":
        patterns = [f"{name}.*" for name in [family.first_unit, *family.heads]]
        extra.append(f"strategy.trainable=[{','.join(patterns)}]")
    return extra


def intended(family: Family, strategy: str, model: nn.Module) -> set[str]:
    """Parameter names (of the plain model) that this strategy must change, from the hand-written layout."""
    names = [n for n, _ in model.named_parameters()]
    batch_norms = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    prefixes = {
        "full": [""],
        "linear_probe": family.heads,
        "last_block": flatten(family.units[-1:]) + family.norm + family.heads,
        "last_block:block": flatten(family.blocks[-1:]) + family.norm + family.heads,
        "last_k": flatten(family.units[-2:]) + family.norm + family.heads,
        "custom": [family.first_unit, *family.heads],
        "lora": family.heads + batch_norms,
    }.get(strategy)
    if strategy == "bitfit":
        return {n for n in names if n.endswith(".bias") or under(n, family.heads)}
    chosen = {n for n in names if under(n, prefixes)}
    if strategy == "lora":  # merged adapters move the target weights
        chosen |= {n for n in names if n.endswith(".weight") and n.split(".")[-2] in family.lora}
    return chosen


@pytest.fixture(scope="module")
def small_digits(tmp_path_factory):
    return saved_digits(tmp_path_factory.mktemp("small-digits"), per_class=6)


def plain_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state as plain transformers would save it: adapters merged in, copies of saved modules resolved."""
    if isinstance(model, PeftModel):
        model = copy.deepcopy(model).merge_and_unload()
    return {n: t.detach().clone() for n, t in model.state_dict().items()}


@pytest.mark.parametrize(("name", "strategy"), CELLS)
def test_strategy_trains_exactly_its_parameters_and_reloads(name, strategy, tiny_family, small_digits, tmp_path):
    family = FAMILIES[name]
    source = tiny_family(name)
    recipe = load_recipe(
        "quickstart",
        [
            f"model.name={source}",
            f"data.dataset={small_digits}",
            "training.max_steps=3",
            "training.batch_size=8",
            "training.lr=1e-2",
            f"output.dir={tmp_path}",
            *overrides(family, strategy),
        ],
    )
    trainer, _, summary, _ = build_trainer(recipe, tmp_path)
    before = plain_state(trainer.model)
    trainer.train()
    pixels = torch.randn(3, 3, family.size, family.size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        in_memory = trainer.model.eval()(pixel_values=pixels).logits
    save_final_model(trainer, tmp_path)

    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / MODEL_DIR).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=pixels).logits, in_memory, atol=1e-5, rtol=1e-4)

    after = reloaded.state_dict()
    assert set(after) == set(before)
    params = {n for n, _ in reloaded.named_parameters()}
    changed = {n for n in params if not torch.equal(before[n], after[n])}
    expected = intended(family, strategy, reloaded)
    assert changed == expected, (
        f"unexpected: {sorted(changed - expected)[:5]}, unmoved: {sorted(expected - changed)[:5]}"
    )
    assert summary.trainable_head == sum(after[n].numel() for n in params if under(n, family.heads))

    # A BatchNorm's running statistics move exactly when the whole module trains.
    for module_name, module in reloaded.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            trains = all(f"{module_name}.{p}" in expected for p, _ in module.named_parameters())
            moved = not torch.equal(before[f"{module_name}.running_mean"], after[f"{module_name}.running_mean"])
            assert moved == trains, f"{module_name}: statistics moved={moved}, module trains={trains}"
    frozen_buffers = [
        n for n in after if n not in params and not under(n.rsplit(".", 1)[0], _trained_modules(expected))
    ]
    assert all(torch.equal(before[n], after[n]) for n in frozen_buffers)

    if strategy == "lora":
        base = AutoModelForImageClassification.from_pretrained(
            source, num_labels=5, id2label=reloaded.config.id2label, ignore_mismatched_sizes=True
        )
        adapted = load_adapter(base, tmp_path / ADAPTER_DIR).eval()
        with torch.no_grad():
            torch.testing.assert_close(adapted(pixel_values=pixels).logits, in_memory, atol=1e-5, rtol=1e-4)


def _trained_modules(expected: set[str]) -> list[str]:
    return sorted({n.rsplit(".", 1)[0] for n in expected})


def test_plain_peft_loads_adapters_of_ordinary_layers(tiny_family, small_digits, tmp_path):
    """Only weight-standardised convolutions need hf_tl's loader; other adapters load with peft as it is."""
    source = tiny_family("convnext")
    recipe = load_recipe(
        "quickstart",
        [f"model.name={source}", f"data.dataset={small_digits}", "training.max_steps=2", "training.batch_size=8",
         "strategy.kind=lora", f"output.dir={tmp_path}"],
    )  # fmt: skip
    trainer, *_ = build_trainer(recipe, tmp_path)
    trainer.train()
    save_final_model(trainer, tmp_path)
    merged = AutoModelForImageClassification.from_pretrained(tmp_path / MODEL_DIR).eval()
    base = AutoModelForImageClassification.from_pretrained(source, num_labels=5, ignore_mismatched_sizes=True)
    adapted = PeftModel.from_pretrained(base, tmp_path / ADAPTER_DIR).eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(adapted(pixel_values=pixels).logits, merged(pixel_values=pixels).logits)
