"""Strategy choices that are refused, the blocks map of unusual models, and LoRA on standardised convolutions."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import transformers
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForImageClassification
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

from hf_tl.config.recipe import StrategySection
from hf_tl.errors import HfTlError, RecipeError
from hf_tl.models.families import FAMILIES, FamilySpec, layout, model_types
from hf_tl.models.loading import replace_heads
from hf_tl.models.mlp_head_code import BASE_CLASSES
from hf_tl.strategies.freezing import apply_strategy
from hf_tl.strategies.registry import STRATEGIES
from hf_tl.strategies.weight_standardized_lora import register


def model_of(tiny_family, name: str):
    return AutoModelForImageClassification.from_pretrained(tiny_family(name))


def test_last_k_beyond_the_model_names_the_range(tiny_family):
    with pytest.raises(RecipeError, match=r"strategy.blocks=5.*has 2 units.*choose 1 to 2"):
        apply_strategy(model_of(tiny_family, "resnet"), StrategySection(kind="last_k", blocks=5))


def test_custom_without_patterns_is_refused(tiny_vit):
    with pytest.raises(RecipeError, match=r"strategy.kind=custom needs strategy.trainable"):
        apply_strategy(AutoModelForImageClassification.from_pretrained(tiny_vit), StrategySection(kind="custom"))


def test_custom_pattern_that_matches_nothing_shows_real_names(tiny_vit):
    model = AutoModelForImageClassification.from_pretrained(tiny_vit)
    with pytest.raises(RecipeError, match=r"'encoder.layer.2.\*' matches no parameter.*vit.embeddings"):
        apply_strategy(model, StrategySection(kind="custom", trainable=["encoder.layer.2.*", "classifier.*"]))


def test_custom_that_freezes_the_fresh_head_is_refused(tiny_vit):
    model = AutoModelForImageClassification.from_pretrained(tiny_vit)
    with pytest.raises(RecipeError, match=r"head frozen.*classifier\.\*"):
        apply_strategy(model, StrategySection(kind="custom", trainable=["vit.layers.2.*"]))


def test_lora_target_that_matches_nothing_lists_the_defaults(tiny_vit):
    model = AutoModelForImageClassification.from_pretrained(tiny_vit)
    with pytest.raises(RecipeError, match=r"\['query'\] match no module.*default targets are \['q_proj', 'v_proj'\]"):
        apply_strategy(model, StrategySection(kind="lora", target_modules=["query"]))


def test_unknown_family_suggests_full(tmp_path):
    from transformers import MobileViTConfig, MobileViTForImageClassification

    model = MobileViTForImageClassification(MobileViTConfig(image_size=32, hidden_sizes=[16, 16, 16]))
    with pytest.raises(HfTlError, match=r"model type 'mobilevit'.*timm models.*strategy.kind=full"):
        layout(model)


def test_every_registered_strategy_has_a_freezing_rule_or_is_lora_and_a_card_text():
    defaults = dataclasses.asdict(StrategySection())
    for name, strategy in STRATEGIES.items():
        assert strategy.name == name
        assert strategy.freezing is not None or name == "lora", name
        assert strategy.card_text.format(**defaults), name  # its placeholders are strategy.* keys


def test_recipe_offers_exactly_the_registered_strategies():
    kind = next(f for f in dataclasses.fields(StrategySection) if f.name == "kind")
    assert kind.metadata["choices"] == tuple(STRATEGIES)


def test_every_family_has_an_mlp_head_class_and_every_mlp_head_class_a_family():
    """A family on one side only would train with model.head=mlp and then fail to save it."""
    for model_type in model_types():
        classes = MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES[model_type]
        classes = (classes,) if isinstance(classes, str) else classes
        assert set(classes) <= set(BASE_CLASSES), model_type
    for name in BASE_CLASSES:
        assert getattr(transformers, name).config_class.model_type in model_types(), name


def test_mlp_head_for_a_family_it_cannot_be_saved_for_is_refused_before_training(monkeypatch):
    from transformers import MobileViTConfig, MobileViTForImageClassification

    monkeypatch.setitem(
        FAMILIES, "mobilevit", FamilySpec(units=("mobilevit.encoder.layer",), norm=(), heads=("classifier",))
    )
    model = MobileViTForImageClassification(MobileViTConfig(image_size=32, hidden_sizes=[16, 16, 16]))
    with pytest.raises(HfTlError, match=r"model.head=mlp cannot be saved for family 'mobilevit'.*model.head=linear"):
        replace_heads(model, ["a", "b", "c"], "mlp")
    replace_heads(model, ["a", "b", "c"], "linear")
    assert model.classifier.out_features == 3


def test_cait_units_end_with_the_class_attention_blocks(tiny_family):
    """timm groups CaiT's class-attention blocks with self-attention blocks; the paper trains the last alone."""
    parts = layout(model_of(tiny_family, "cait"))
    assert parts.units[-2:] == [("timm_model.blocks_token_only.0",), ("timm_model.blocks_token_only.1",)]
    assert parts.heads == ["timm_model.head"] and parts.norm == ["timm_model.norm"]


def test_densenet_units_come_from_timms_group_matcher(tiny_family):
    parts = layout(model_of(tiny_family, "densenet"))
    assert parts.family == "timm:densenet121"
    assert parts.units == [
        ("timm_model.features.denseblock1", "timm_model.features.transition1"),
        ("timm_model.features.denseblock2",),
    ]
    assert parts.norm == ["timm_model.features.norm5"] and parts.heads == ["timm_model.classifier"]


def test_frozen_batchnorm_stays_in_eval_mode_through_train(tiny_family):
    model, _ = apply_strategy(model_of(tiny_family, "resnet"), StrategySection(kind="last_block"))
    model.train()
    frozen = model.resnet.embedder.embedder.normalization
    trained = model.resnet.encoder.stages[1].layers[0].shortcut.normalization
    assert not frozen.training and trained.training


def _bit_with_random_adapters(tiny_family, config: LoraConfig):
    torch.manual_seed(0)
    model = get_peft_model(model_of(tiny_family, "bit"), config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)
    return model.eval()


def _merge_gap(model) -> float:
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        unmerged = model(pixel_values=pixels).logits
        merged = model.merge_and_unload()(pixel_values=pixels).logits
    return (unmerged - merged).abs().max().item()


def test_lora_on_weight_standardised_convolutions_merges_exactly(tiny_family):
    """peft's own layer adds B(A(x)) outside the standardisation, which no merged kernel reproduces."""
    targets = ["conv1", "conv2", "conv3"]
    ours = _bit_with_random_adapters(tiny_family, register(LoraConfig(r=4, target_modules=targets)))
    plain = _bit_with_random_adapters(tiny_family, LoraConfig(r=4, target_modules=targets))
    assert _merge_gap(ours) < 1e-5
    assert _merge_gap(plain) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_timm_resnetv2_conv_classifier_gets_a_head_that_reloads(tmp_path, head):
    """timm's ResNetV2 (BiT) classifies with a 1x1 convolution; the fresh head keeps that form and reloads."""
    from conftest import save_timm, saved_digits

    from hf_tl.config.recipe import load_recipe
    from hf_tl.runs.folder import MODEL_DIR
    from hf_tl.training.export import save_final_model
    from hf_tl.training.run import build_trainer

    source = save_timm(tmp_path / "rv2", "resnetv2_50x1_bit", channels=(128, 128, 128, 128), stem_chs=32)
    recipe = load_recipe(
        "quickstart",
        [
            f"model.name={source}",
            f"data.dataset={saved_digits(tmp_path, per_class=4)}",
            f"model.head={head}",
            "training.max_steps=2",
            "training.batch_size=8",
            f"output.dir={tmp_path / 'run'}",
        ],
    )
    trainer, *_ = build_trainer(recipe, tmp_path / "run")
    trainer.train()
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        in_memory = trainer.model.eval()(pixel_values=pixels).logits
    save_final_model(trainer, tmp_path / "run")
    reloaded = AutoModelForImageClassification.from_pretrained(
        tmp_path / "run" / MODEL_DIR, trust_remote_code=head == "mlp"
    ).eval()
    assert in_memory.shape == (2, 5)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=pixels).logits, in_memory, atol=1e-5, rtol=1e-4)


def test_a_new_strategy_is_one_registry_record(tiny_vit, monkeypatch):
    """The record's rule is what apply_strategy runs; nothing else needs to know the strategy."""
    from hf_tl.strategies.registry import Strategy

    def head_and_norm(names, parts, cfg):
        return {n for n in names if n.startswith(tuple(parts.norm + parts.heads))}

    record = Strategy(
        "head_and_norm", cacheable=False, card_text="the norm and the head train.", freezing=head_and_norm
    )
    monkeypatch.setitem(STRATEGIES, "head_and_norm", record)
    model = AutoModelForImageClassification.from_pretrained(tiny_vit)
    _, summary = apply_strategy(model, StrategySection(kind="head_and_norm"))
    assert summary.trainable_modules == ["vit.layernorm", "classifier"]
