"""The feature cache and train-time augmentation: random crops and mixing cannot be cached; flip and none can."""

from __future__ import annotations

import json

import pytest
from conftest import saved_digits

from hf_tl.config.recipe import load_recipe
from hf_tl.errors import RecipeError
from hf_tl.runs.folder import METRICS_FILE
from hf_tl.training.cache import features as feature_cache
from hf_tl.training.run import run


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return saved_digits(tmp_path_factory.mktemp("augment-digits"), per_class=12)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TL_CACHE", str(tmp_path / "feature-cache"))


def recipe(model_dir, digits, out, *overrides):
    return load_recipe(
        "quickstart",
        [
            f"model.name={model_dir}",
            f"data.dataset={digits}",
            "strategy.kind=last_block",
            "training.epochs=2",
            "training.batch_size=7",  # odd: the last image of each batch is not mixed
            "training.lr=5e-3",
            "training.logging_steps=1",
            f"output.dir={out}",
            *overrides,
        ],
    )


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["data.augment=crop_flip"], "data.augment=crop_flip"),
        (["data.augment=trivialaugment"], "data.augment=trivialaugment"),
        (["training.mixup=0.2"], "training.mixup=0.2"),
        (["data.augment=flip", "training.cutmix=1"], "training.cutmix=1"),
    ],
)
def test_cache_features_true_with_random_inputs_is_a_recipe_error(tiny_vit, digits, tmp_path, overrides, named):
    with pytest.raises(RecipeError) as e:
        recipe(tiny_vit, digits, tmp_path, "training.cache_features=true", *overrides)
    assert "training.cache_features" in str(e.value) and named in str(e.value)


def test_flip_none_and_label_smoothing_stay_cacheable(tiny_vit, digits, tmp_path):
    for augment, views in (("flip", 2), ("none", 1)):
        checked = recipe(tiny_vit, digits, tmp_path, "training.cache_features=true", f"data.augment={augment}")
        assert feature_cache.views_of(checked) == views
        assert feature_cache.random_input_reason(checked) is None
    smoothed = recipe(tiny_vit, digits, tmp_path, "training.cache_features=true", "training.label_smoothing=0.1")
    assert feature_cache.random_input_reason(smoothed) is None


def test_auto_turns_the_cache_off_for_crop_flip_and_mixup_and_the_run_finishes(tiny_vit, digits, tmp_path, capsys):
    """A tiny run with crop_flip, mixup, cutmix and label smoothing: it trains, and says why the cache is off."""
    overrides = ("data.augment=crop_flip", "training.mixup=0.2", "training.cutmix=1.0", "training.label_smoothing=0.1")
    run(recipe(tiny_vit, digits, tmp_path, *overrides))
    metrics = json.loads((tmp_path / METRICS_FILE).read_text())
    reason = "data.augment=crop_flip and training.mixup=0.2 and training.cutmix=1 change the images at every step"
    assert metrics["feature_cache"] == {"used": False, "reason": reason}
    lines = [line for line in capsys.readouterr().out.splitlines() if "feature cache" in line]
    assert lines == [f"hf_tl: feature cache off: {reason}"]
    history = json.loads((tmp_path / "log_history.json").read_text())
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == 2 * 7 and all(loss > 0 for loss in losses)  # 48 images in batches of 7, two epochs
    assert 0 <= metrics["eval"]["accuracy"] <= 1 and metrics["eval"]["loss"] > 0
