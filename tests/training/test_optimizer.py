"""Layer-wise learning-rate decay and the head learning rate: the same groups as timm's, in any family."""

from __future__ import annotations

import re

import pytest
import timm
import torch
from conftest import save_timm
from timm.optim import param_groups_layer_decay
from transformers import (
    AutoModelForImageClassification,
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
    TrainerCallback,
    ViTConfig,
    ViTForImageClassification,
)

from hf_tl.config.recipe import StrategySection, load_recipe
from hf_tl.strategies.freezing import apply_strategy
from hf_tl.training.optimizer import param_groups
from hf_tl.training.run import build_trainer

TIMM_VIT = dict(depth=4, embed_dim=32, num_heads=2, img_size=32, patch_size=8, mlp_ratio=4.0)
HF_VIT = dict(
    image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=128
)
# transformers' ViT parameter names -> timm's, for the same architecture (q, k and v are fused in timm's qkv).
HF_TO_TIMM = [
    (r"vit\.embeddings\.cls_token", "cls_token"),
    (r"vit\.embeddings\.position_embeddings", "pos_embed"),
    (r"vit\.embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"vit\.layers\.(\d+)\.attention\.[qkv]_proj\.", r"blocks.\1.attn.qkv."),
    (r"vit\.layers\.(\d+)\.attention\.o_proj\.", r"blocks.\1.attn.proj."),
    (r"vit\.layers\.(\d+)\.layernorm_before\.", r"blocks.\1.norm1."),
    (r"vit\.layers\.(\d+)\.layernorm_after\.", r"blocks.\1.norm2."),
    (r"vit\.layers\.(\d+)\.mlp\.", r"blocks.\1.mlp."),
    (r"vit\.layernorm\.", "norm."),
    (r"classifier\.", "head."),
]


class LearningRates(TrainerCallback):
    """Each group's learning rate after every optimizer step."""

    def __init__(self) -> None:
        self.steps: list[list[float]] = []

    def on_step_end(self, args, state, control, optimizer=None, **kwargs) -> None:
        self.steps.append([g["lr"] for g in optimizer.param_groups])


def per_parameter(groups: list[dict], model: torch.nn.Module) -> dict[str, tuple[float, float, float | None]]:
    """name -> (lr_scale, weight_decay, lr) of the group holding it; lr None for timm's own groups."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: (g["lr_scale"], g["weight_decay"], g.get("lr")) for g in groups for p in g["params"]}


def timm_name(hf_name: str) -> str:
    for pattern, replacement in HF_TO_TIMM:
        if re.match(pattern, hf_name):
            return re.sub(pattern, replacement, hf_name, count=1)
    raise AssertionError(f"no timm name for {hf_name}")


def tiny_timm_vit(tmp_path):
    return AutoModelForImageClassification.from_pretrained(
        save_timm(tmp_path / "timm-vit", "vit_tiny_patch16_224", **TIMM_VIT)
    )


@pytest.mark.parametrize("layer_decay", [0.75, 0.5])
def test_timm_model_groups_equal_timms_own(layer_decay, tmp_path):
    wrapper = tiny_timm_vit(tmp_path)
    ours = param_groups(wrapper, lr=1e-3, weight_decay=0.05, layer_decay=layer_decay, head_lr=None)

    reference = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, **TIMM_VIT)
    theirs = param_groups_layer_decay(
        reference, weight_decay=0.05, no_weight_decay_list=reference.no_weight_decay(), layer_decay=layer_decay
    )

    def described(groups, model, prefix=""):
        names = {id(p): n.removeprefix(prefix) for n, p in model.named_parameters()}
        return [(g["lr_scale"], g["weight_decay"], [names[id(p)] for p in g["params"]]) for g in groups]

    assert described(ours, wrapper, "timm_model.") == described(theirs, reference)
    assert len(ours) == 2 * (TIMM_VIT["depth"] + 2)  # embeddings, 4 blocks, norm and head; decay and no decay
    assert {g["lr_scale"] for g in ours} == {layer_decay**k for k in range(TIMM_VIT["depth"] + 2)}
    assert all(g["lr"] == pytest.approx(1e-3 * g["lr_scale"]) for g in ours)


def test_transformers_vit_gets_timms_scale_per_corresponding_parameter():
    torch.manual_seed(0)
    hf = ViTForImageClassification(ViTConfig(**HF_VIT, num_labels=3))
    reference = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, **TIMM_VIT)
    theirs = per_parameter(
        param_groups_layer_decay(
            reference, weight_decay=0.05, no_weight_decay_list=reference.no_weight_decay(), layer_decay=0.75
        ),
        reference,
    )
    ours = per_parameter(param_groups(hf, lr=1e-3, weight_decay=0.05, layer_decay=0.75, head_lr=None), hf)

    assert set(ours) == {n for n, _ in hf.named_parameters()}
    for name, (scale, decay, lr) in ours.items():
        their_scale, their_decay, _ = theirs[timm_name(name)]
        assert (name, scale, decay) == (name, pytest.approx(their_scale), their_decay)
        assert lr == pytest.approx(1e-3 * scale)
    assert {timm_name(n) for n in ours} == set(theirs)  # every timm parameter has its counterpart


def test_head_lr_lands_on_the_classifier_and_nothing_else():
    hf = ViTForImageClassification(ViTConfig(**HF_VIT, num_labels=3))
    ours = per_parameter(param_groups(hf, lr=1e-3, weight_decay=0.0, layer_decay=None, head_lr=2e-2), hf)
    assert {n for n, (_, _, lr) in ours.items() if lr == 2e-2} == {"classifier.weight", "classifier.bias"}
    assert all(lr == 1e-3 for n, (_, _, lr) in ours.items() if not n.startswith("classifier."))

    decayed = per_parameter(param_groups(hf, lr=1e-3, weight_decay=0.0, layer_decay=0.5, head_lr=2e-2), hf)
    assert decayed["classifier.weight"][2] == 2e-2
    assert decayed["vit.layernorm.weight"][2] == decayed["vit.layers.3.mlp.fc1.weight"][2] == 1e-3 * 0.5
    assert decayed["vit.embeddings.cls_token"][2] == pytest.approx(1e-3 * 0.5**5)


def test_deit_both_heads_take_head_lr_under_last_block():
    deit = DeiTForImageClassificationWithTeacher(DeiTConfig(**HF_VIT, num_labels=3))
    model, _ = apply_strategy(deit, StrategySection(kind="last_block"))
    ours = per_parameter(param_groups(model, lr=1e-3, weight_decay=0.05, layer_decay=0.5, head_lr=1e-2), model)

    assert set(ours) == {n for n, p in model.named_parameters() if p.requires_grad}  # only what trains
    assert {n for n, (_, _, lr) in ours.items() if lr == 1e-2} == {
        f"{head}.{leaf}" for head in ("cls_classifier", "distillation_classifier") for leaf in ("weight", "bias")
    }
    assert ours["deit.layers.3.mlp.fc1.weight"][2] == ours["deit.layernorm.weight"][2] == 1e-3 * 0.5


@pytest.mark.parametrize("timm_family", [False, True])
def test_lora_groups_read_depth_through_the_peft_wrapper(timm_family, tmp_path):
    model = tiny_timm_vit(tmp_path) if timm_family else ViTForImageClassification(ViTConfig(**HF_VIT, num_labels=3))
    model, _ = apply_strategy(model, StrategySection(kind="lora"))
    ours = per_parameter(param_groups(model, lr=1e-3, weight_decay=0.0, layer_decay=0.5, head_lr=1e-2), model)

    assert set(ours) == {n for n, p in model.named_parameters() if p.requires_grad}
    block, head = ("timm_model.blocks", "timm_model.head") if timm_family else ("vit.layers", "classifier")
    for name, (scale, _, lr) in ours.items():
        if f".{head}.modules_to_save." in name:
            assert lr == 1e-2, name
        else:
            layer = int(re.search(rf"{re.escape(block)}\.(\d+)\.", name).group(1))
            assert "lora_" in name and scale == pytest.approx(0.5 ** (4 - layer)), name


def test_tiny_run_with_layer_decay_trains_on_the_groups_and_keeps_their_ratios(tiny_deit, digits_dir, tmp_path, capsys):
    recipe = load_recipe(
        "quickstart",
        [
            f"model.name={tiny_deit}",
            f"data.dataset={digits_dir}",
            "strategy.kind=last_block",
            "training.cache_features=true",
            "training.max_steps=4",
            "training.batch_size=16",
            "training.warmup_ratio=0.5",
            "training.lr=1e-3",
            "training.weight_decay=0.05",
            "training.layer_decay=0.5",
            "training.head_lr=4e-3",
            f"output.dir={tmp_path / 'run'}",
        ],
    )
    trainer, *_ = build_trainer(recipe, tmp_path / "run")
    assert trainer.features is not None  # trained on the cached prefix
    seen = LearningRates()
    trainer.add_callback(seen)
    trainer.train()

    groups = trainer.optimizer.param_groups
    initial = [g["initial_lr"] for g in groups]
    assert sorted(set(initial)) == pytest.approx([0.5e-3, 4e-3])  # the last block with the final norm; the heads
    factors = [lrs[0] / initial[0] for lrs in seen.steps]
    assert factors == pytest.approx([0.5, 1.0, 0.5, 0.0])  # two warm-up steps, then the linear decay
    for lrs, factor in zip(seen.steps, factors, strict=True):  # every group moved by the same factor
        assert lrs == pytest.approx([lr * factor for lr in initial])
    trained = {id(p) for g in groups for p in g["params"]}
    assert trained == {id(p) for p in trainer.model.parameters() if p.requires_grad}
    assert "hf_tl: layer decay 0.5 over 1 trainable layer(s) (lr 0.0005); head lr 0.004\n" in capsys.readouterr().out
