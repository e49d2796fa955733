"""`python -m hf_tl.params`: exact trainable counts from configs alone, no data and no weights."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import run_cli

from hf_tl.config.recipe import load_recipe
from hf_tl.strategies.freezing import count_parameters
from hf_tl.studies.study import figure_for, load_study
from hf_tl.studies.sweep import write_cell_recipe

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


# The published configs of the papers' checkpoints (tests/fixtures/hub/, SOURCES.md): no weights, nothing fetched.
DEIT = "facebook/deit-base-distilled-patch16-224"
VIT_B16 = "google/vit-base-patch16-224-in21k"
CAIT = "timm/cait_s24_224.fb_dist_in1k"
DENSENET = "timm/densenet201.tv_in1k"


DEIT_CUSTOM = "strategy.trainable=[deit.layers.11.*,cls_classifier.*,distillation_classifier.*]"


@pytest.mark.parametrize(
    ("model_id", "overrides", "key", "expected"),
    [
        # Malpure et al. 2021, Table 1 (last block + final norm + the paper's MLP heads).
        (DEIT, ["strategy.kind=last_block", "model.head=mlp"], "trainable", 7_488_276),
        (CAIT, ["strategy.kind=last_block", "model.head=mlp"], "trainable", 1_877_130),
        # Table 1 counts DenseNet-201 without its head: dense block 4 + norm5.
        (DENSENET, ["strategy.kind=last_block"], "trainable_backbone", 6_982_400),
        # The public re-implementation: last block and both linear heads, no final norm.
        (DEIT, ["strategy.kind=custom", DEIT_CUSTOM], "trainable", 7_103_252),
        # LoRA r=8 on query and value of ViT-B/16: VTAB-1k's 0.295 M.
        (VIT_B16, ["strategy.kind=lora", "strategy.r=8"], "trainable_backbone", 294_912),
    ],
)
def test_published_trainable_counts(real_size_hub, model_id, overrides, key, expected):
    """Through the CLI, the Hub id resolved offline from the fixture cache as a user's download would be."""
    args = ["recipe=quickstart", f"model.name={model_id}", "model.num_labels=10", *overrides, "--json"]
    result = run_cli(sys.executable, "-m", "hf_tl.params", *args, **real_size_hub.env)
    assert result.returncode == 0, result.stderr
    counted = json.loads(result.stdout)
    assert counted[key] == expected
    assert counted["trainable"] == counted["trainable_backbone"] + counted["trainable_head"]


@pytest.mark.parametrize(
    ("recipe", "key", "expected"),
    [
        ("cait_s24_lastblock", "trainable", 1_877_130),
        ("densenet201_lastblock", "trainable_backbone", 6_982_400),
        ("vit_b16_lora", "trainable_backbone", 294_912),
    ],
)
def test_shipped_recipes_train_what_their_papers_count(real_size_hub, recipe, key, expected):
    """The shipped recipe, pointed at the published files of the checkpoint it names."""
    model_id = load_recipe(recipe).model.name
    summary = count_parameters(
        load_recipe(recipe, [f"model.name={real_size_hub.snapshot(model_id)}", "model.num_labels=10"])
    )
    assert getattr(summary, key) == expected


STUDY_ROWS = [
    (name, row["backbone"]) for name in ("malpure2021", "malpure2021_repo") for row in load_study(name).figures
]


@pytest.mark.parametrize(("study_name", "backbone"), STUDY_ROWS)
def test_each_study_cell_trains_the_count_its_figures_file_gives(real_size_hub, tmp_path, study_name, backbone):
    """The study's own recipe for the row, on the published files of its checkpoint."""
    study = load_study(study_name)
    (cell,) = [c for c in study.cells if c.backbone.key == backbone]
    row = figure_for(study.figures, backbone, cell.dataset.key, cell.strategy.key)
    model_dir = real_size_hub.snapshot(cell.backbone.model)
    recipe = load_recipe(str(write_cell_recipe(tmp_path, study, cell)), [f"model.name={model_dir}"])
    summary = count_parameters(recipe)
    assert getattr(summary, row["counted_as"]) == row["hf_tl_trainable_parameters"]
    assert summary.trainable == summary.trainable_backbone + summary.trainable_head


def test_malpure_counts_equal_the_papers_except_where_the_checkpoint_differs_and_the_note_says_by_how_much():
    rows = load_study("malpure2021").figures
    differ = {r["backbone"]: r for r in rows if r["hf_tl_trainable_parameters"] != r["paper_trainable_parameters"]}
    assert set(differ) == {"resnet152v2", "vgg19"}  # torchvision's ResNet-152 v1 and VGG-19 with fc6/fc7
    for row in differ.values():
        gap = abs(row["paper_trainable_parameters"] - row["hf_tl_trainable_parameters"])
        assert row["note"].startswith(f"{gap:,} ")
