"""`training.cache_features`: the frozen prefix runs once, and the run ends where the uncached run ends."""

from __future__ import annotations

import errno
import json
import os

import pytest
import torch
from conftest import save_vit, saved_digits
from transformers import AutoModelForImageClassification

from hf_tl.backbones import replace_heads
from hf_tl.errors import HfTlError
from hf_tl.feature_cache import cache_root
from hf_tl.prefix_split import NotCacheable, plan
from hf_tl.recipe import StrategySection, load_recipe
from hf_tl.rundir import METRICS_FILE
from hf_tl.strategies import apply_strategy
from hf_tl.train import build_trainer, run

TOLERANCE = 1e-4  # the bar: same seed, CPU, fp32


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return saved_digits(tmp_path_factory.mktemp("cache-digits"), per_class=12)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TL_CACHE", str(tmp_path / "feature-cache"))


def train(model_dir, digits, out, *overrides):
    recipe = load_recipe(
        "quickstart",
        [
            f"model.name={model_dir}",
            f"data.dataset={digits}",
            "training.epochs=3",
            "training.batch_size=8",
            "training.lr=5e-3",
            "training.logging_steps=1",
            f"output.dir={out}",
            *overrides,
        ],
    )
    run(recipe)
    return json.loads((out / METRICS_FILE).read_text()), json.loads((out / "log_history.json").read_text())


def assert_same_run(cached, uncached):
    (metrics_c, log_c), (metrics_u, log_u) = cached, uncached
    for split in ("eval", "train"):
        for key in ("accuracy", "loss", "macro_f1"):
            assert metrics_c[split][key] == pytest.approx(metrics_u[split][key], abs=TOLERANCE), (split, key)
    losses_c = [h["loss"] for h in log_c if "loss" in h]
    losses_u = [h["loss"] for h in log_u if "loss" in h]
    assert len(losses_c) == len(losses_u) > 5
    assert losses_c == pytest.approx(losses_u, abs=TOLERANCE)  # every logged step, not only the end


@pytest.mark.slow
@pytest.mark.parametrize(
    ("family", "strategy", "entries"),
    [
        ("vit", ["strategy.kind=last_block"], ["vit.layers.2"]),  # with horizontal flip: two cached views
        ("vit", ["strategy.kind=last_k", "strategy.blocks=2", "data.hflip=false"], ["vit.layers.1"]),
        ("deit", ["strategy.kind=linear_probe"], ["cls_classifier", "distillation_classifier"]),
        ("resnet", ["strategy.kind=last_block"], ["resnet.encoder.stages.1"]),  # frozen BatchNorm before the cut
        ("cait", ["strategy.kind=last_block", "model.head=mlp"], ["timm_model.blocks_token_only.1"]),
    ],
)
def test_cached_run_ends_where_the_uncached_run_ends(tiny_family, digits, tmp_path, family, strategy, entries):
    model = tiny_family(family)
    cached = train(model, digits, tmp_path / "cached", *strategy, "training.cache_features=true")
    uncached = train(model, digits, tmp_path / "uncached", *strategy, "training.cache_features=false")
    assert cached[0]["feature_cache"]["used"] and cached[0]["feature_cache"]["entries"] == entries
    assert uncached[0]["feature_cache"] == {"used": False}
    assert_same_run(cached, uncached)


def test_saved_model_is_the_plain_model(tiny_vit, digits, tmp_path):
    """The placeholders are gone before saving: the reloaded model reads images again."""
    metrics, _ = train(tiny_vit, digits, tmp_path, "strategy.kind=last_block", "training.cache_features=true")
    assert metrics["feature_cache"]["used"]
    model = AutoModelForImageClassification.from_pretrained(tmp_path / "model")
    assert "forward" not in vars(model.vit.embeddings)
    logits = model(pixel_values=torch.randn(2, 3, 16, 16)).logits
    assert logits.shape == (2, 5) and logits.std() > 0


def store_folders():
    return sorted(p for p in cache_root().iterdir() if p.is_dir()) if cache_root().exists() else []


def test_disk_store_is_reused_and_any_change_of_preprocessing_rebuilds_it(tiny_vit, digits, tmp_path, capsys):
    args = ("strategy.kind=last_block", "training.cache_features=true", "training.cache_storage=disk")
    first = train(tiny_vit, digits, tmp_path / "a", *args)
    assert "reusing" not in capsys.readouterr().out
    assert len(store_folders()) == 1 and first[0]["feature_cache"]["location"].startswith("disk")

    again = train(tiny_vit, digits, tmp_path / "b", *args)
    assert "feature cache: reusing" in capsys.readouterr().out
    assert len(store_folders()) == 1
    assert_same_run(again, first)

    for change in ("data.interpolation=bicubic", "data.image_mean=[0.4,0.4,0.4]", "data.hflip=false"):
        train(tiny_vit, digits, tmp_path / change.split("=")[0], *args, change)
        assert "reusing" not in capsys.readouterr().out, change
    assert len(store_folders()) == 4


def test_damaged_store_is_rebuilt_not_read(tiny_vit, digits, tmp_path, capsys):
    args = ("strategy.kind=last_block", "training.cache_features=true", "training.cache_storage=disk")
    first = train(tiny_vit, digits, tmp_path / "a", *args)
    (folder,) = store_folders()
    part = folder / "part0.bin"
    part.write_bytes(part.read_bytes()[:100])  # a store cut short
    capsys.readouterr()
    again = train(tiny_vit, digits, tmp_path / "b", *args)
    assert "reusing" not in capsys.readouterr().out
    assert_same_run(again, first)
    # a half-written store from a crashed build is never a candidate: only complete folders carry meta.json
    assert not list(cache_root().glob("*.partial-*"))


@pytest.mark.parametrize(
    ("family", "strategy", "reason"),
    [
        ("vit", "strategy.kind=full", "strategy full trains inside every block"),
        ("vit", "strategy.kind=lora", "strategy lora trains inside every block"),
        ("swin", "strategy.kind=last_block", "drops activations at random before the cut"),  # drop_path_rate 0.1
    ],
)
def test_auto_says_why_the_cache_is_off(tiny_family, digits, tmp_path, capsys, family, strategy, reason):
    metrics, _ = train(tiny_family(family), digits, tmp_path, strategy, "training.epochs=1")
    assert metrics["feature_cache"] == {"used": False}
    line = next(line for line in capsys.readouterr().out.splitlines() if "feature cache off:" in line)
    assert reason in line


def test_true_where_the_cache_cannot_work_is_an_error(tiny_vit, digits, tmp_path):
    with pytest.raises(HfTlError, match="training.cache_features=true, but strategy full trains inside every block"):
        train(tiny_vit, digits, tmp_path, "strategy.kind=full", "training.cache_features=true")


def prepared(model_dir, **strategy):
    model = AutoModelForImageClassification.from_pretrained(model_dir)
    replace_heads(model, [str(i) for i in range(5)], "linear")
    model, _ = apply_strategy(model, StrategySection(**strategy))
    size = model.config.image_size if hasattr(model.config, "image_size") else 32
    generator = torch.Generator().manual_seed(0)
    return model, lambda n: torch.randn(n, 3, size, size, generator=generator)


@pytest.mark.parametrize(
    ("family", "strategy", "entries", "prefix"),
    [
        ("vit", {"kind": "linear_probe"}, ["classifier"], ["vit"]),
        (
            "swin",
            {"kind": "last_k", "blocks": 2},
            ["swin.encoder.layers.1.blocks.0"],
            ["swin.embeddings", "swin.encoder.layers.0"],
        ),
        (
            "convnext",
            {"kind": "last_block"},
            ["convnext.encoder.stages.1"],
            ["convnext.embeddings", "convnext.encoder.stages.0"],
        ),
        (
            "bit",
            {"kind": "last_block", "unit": "block"},
            ["bit.encoder.stages.1.layers.1"],
            ["bit.embedder", "bit.encoder.stages.0", "bit.encoder.stages.1.layers.0"],
        ),
        ("densenet", {"kind": "last_block"}, ["timm_model.features.denseblock2"], None),
    ],
)
def test_the_cut_comes_from_the_blocks_map_and_is_verified(tiny_family, family, strategy, entries, prefix):
    model, pixels = prepared(tiny_family(family), **strategy)
    split = plan(model, pixels)
    assert split.entries == entries
    if prefix:
        assert split.prefix == prefix
    split.verify(model, pixels(4))  # raises NotCacheable if the fed model's logits differ


def test_a_model_that_reads_past_the_cut_is_refused(tiny_family):
    """CaiT's second class-attention block also reads the patch tokens, which the cache does not hold."""
    model, pixels = prepared(tiny_family("cait"), kind="last_k", blocks=2)
    split = plan(model, pixels)
    with pytest.raises(NotCacheable, match="reads the frozen part's values past timm_model.blocks_token_only.0"):
        split.verify(model, pixels(4))


def test_a_trainable_module_before_the_cut_is_no_prefix(tiny_vit):
    model, pixels = prepared(
        tiny_vit, kind="custom", trainable=["vit.embeddings.cls_token", "vit.layers.2.*", "classifier.*"]
    )
    with pytest.raises(NotCacheable, match="is no block, final norm or head"):
        plan(model, pixels)


def test_dropout_written_as_a_number_in_the_model_code_turns_auto_off(digits, tmp_path, capsys):
    """ViT's attention dropout is a float its attention function applies, not an nn.Dropout module."""
    model = save_vit(tmp_path / "vit-dropout", attention_probs_dropout_prob=0.3)
    metrics, _ = train(model, digits, tmp_path / "run", "strategy.kind=last_block", "training.epochs=1")
    assert metrics["feature_cache"] == {"used": False}
    assert "drops activations at random before the cut" in capsys.readouterr().out


def test_a_full_disk_while_building_is_a_clear_error_and_leaves_nothing(tiny_vit, digits, tmp_path, monkeypatch):
    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    args = ("strategy.kind=last_block", "training.cache_features=true", "training.cache_storage=disk")
    with pytest.raises(HfTlError, match="the disk is full: the feature cache needs .* GB under"):
        train(tiny_vit, digits, tmp_path / "run", *args)
    assert not store_folders() and not list(cache_root().glob("*.partial-*"))


def test_lora_with_channels_last_on_an_accelerator_builds(tiny_resnet, digits, tmp_path, monkeypatch):
    """channels_last is decided on the plain model: a peft wrapper renames every module."""
    monkeypatch.setattr("hf_tl.trainer.no_accelerator", lambda: False)  # as on a GPU machine
    recipe = load_recipe(
        "quickstart",
        [f"model.name={tiny_resnet}", f"data.dataset={digits}", f"output.dir={tmp_path}", "strategy.kind=lora"],
    )
    trainer, *_ = build_trainer(recipe, tmp_path)
    conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
