"""`python -m hf_tl.params`: exact trainable counts from configs alone, no data and no weights."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

from hf_tl.params import count_parameters
from hf_tl.recipe import load_recipe

# Tiny ViT of conftest: width 32, MLP 64, 3 blocks. One block: q/k/v/o projections, two layer norms, fc1, fc2.
BLOCK = 4 * (32 * 32 + 32) + 2 * 2 * 32 + (32 * 64 + 64) + (64 * 32 + 32)
NORM = 2 * 32


def counts(model_dir, *overrides):
    return count_parameters(load_recipe("quickstart", [f"model.name={model_dir}", "model.num_labels=10", *overrides]))


def test_block_arithmetic_matches_the_model(tiny_vit):
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(tiny_vit)
    assert BLOCK == 8_544 == sum(p.numel() for p in model.vit.layers[2].parameters())


@pytest.mark.parametrize(
    ("kind", "head", "backbone"),
    [
        ("full", 32 * 10 + 10, None),
        ("linear_probe", 32 * 10 + 10, 0),
        ("last_block", 32 * 10 + 10, BLOCK + NORM),
        ("lora", 32 * 10 + 10, 3 * 2 * (32 * 8 + 8 * 32)),
    ],
)
def test_counts_per_strategy_on_vit(tiny_vit, kind, head, backbone):
    summary = counts(tiny_vit, f"strategy.kind={kind}")
    assert summary.trainable_head == head
    if backbone is not None:
        assert summary.trainable_backbone == backbone
    else:
        assert summary.trainable == summary.total
    assert summary.trainable == summary.trainable_backbone + summary.trainable_head


def test_deit_distilled_last_block_with_mlp_heads(tiny_deit):
    summary = counts(tiny_deit, "strategy.kind=last_block", "model.head=mlp")
    mlp = (32 * 256 + 256) + (256 * 10 + 10)
    assert summary.trainable_head == 2 * mlp
    assert summary.trainable_backbone == BLOCK + NORM
    assert summary.trainable_modules == ["deit.layers.2", "deit.layernorm", "cls_classifier", "distillation_classifier"]


def test_cli_json_keys_and_num_labels(tiny_vit):
    result = run_cli(
        "python",
        "-m",
        "hf_tl.params",
        "recipe=quickstart",
        f"model.name={tiny_vit}",
        "model.num_labels=7",
        "strategy.kind=linear_probe",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert {"trainable", "total", "trainable_backbone", "trainable_head", "trainable_modules"} <= set(data)
    assert data["trainable"] == data["trainable_head"] == 32 * 7 + 7
    assert data["trainable_modules"] == ["classifier"]


def test_cli_human_output(tiny_vit):
    result = run_cli("python", "-m", "hf_tl.params", "recipe=quickstart", f"model.name={tiny_vit}")
    assert result.returncode == 0, result.stderr
    assert "trainable:" in result.stdout and "vit.layers.2" in result.stdout


def test_unreadable_model_is_a_clear_error(tmp_path):
    result = run_cli("python", "-m", "hf_tl.params", "recipe=quickstart", f"model.name={tmp_path / 'missing'}")
    assert result.returncode == 1
    assert "could not load model" in result.stderr and "Traceback" not in result.stderr
