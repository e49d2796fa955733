"""`training.cache_features`: the frozen prefix runs once, and the run ends where the uncached run ends."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import save_vit, saved_digits
from transformers import AutoModelForImageClassification

from hf_tl.config.recipe import StrategySection, load_recipe
from hf_tl.errors import HfTlError
from hf_tl.models.loading import replace_heads
from hf_tl.runs.folder import METRICS_FILE
from hf_tl.strategies.freezing import apply_strategy
from hf_tl.training.cache import features as feature_cache
from hf_tl.training.cache import prefix_split
from hf_tl.training.cache.features import cache_root
from hf_tl.training.cache.prefix_split import NotCacheable, plan
from hf_tl.training.run import build_trainer, run

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
        ("vit", ["strategy.kind=last_k", "strategy.blocks=2", "data.augment=none"], ["vit.layers.1"]),
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

    for change in ("data.interpolation=bicubic", "data.image_mean=[0.4,0.4,0.4]", "data.augment=none"):
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
    out = capsys.readouterr().out
    assert "reusing" not in out
    assert f"hf_tl: feature cache: {folder} is damaged (part0.bin has the wrong size); rebuilding" in out
    assert_same_run(again, first)
    # a half-written store from a crashed build is never a candidate: only complete folders carry meta.json
    assert not list(cache_root().glob("*.partial-*"))


@pytest.mark.slow
def test_a_store_overwritten_with_random_bytes_of_its_size_is_rebuilt_not_read(tiny_vit, digits, tmp_path, capsys):
    """Only the content can tell: meta.json's checksum of each part file, made at build time, is checked on reuse."""
    args = ("strategy.kind=last_block", "training.cache_features=true", "training.cache_storage=disk")
    first = train(tiny_vit, digits, tmp_path / "a", *args)
    (folder,) = store_folders()
    part = folder / "part0.bin"
    size = part.stat().st_size
    part.write_bytes(np.random.default_rng(0).bytes(size))
    capsys.readouterr()
    again = train(tiny_vit, digits, tmp_path / "b", *args)
    out = capsys.readouterr().out
    assert f"hf_tl: feature cache: {folder} is damaged (checksum mismatch); rebuilding" in out
    assert "reusing" not in out
    assert_same_run(again, first)
    assert store_folders() == [folder] and part.stat().st_size == size


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


# Issue 14: the cache imports without the trainer, and works where the OS has neither fcntl nor posix_fallocate.

DISK = ("strategy.kind=last_block", "training.cache_features=true", "training.cache_storage=disk")


def test_without_posix_fallocate_a_full_disk_still_fails_before_the_build(tiny_vit, digits, tmp_path, monkeypatch):
    monkeypatch.delattr(os, "posix_fallocate")  # as on Windows or macOS
    real_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real_usage(path)._replace(free=0))
    monkeypatch.setattr(feature_cache, "_fill", lambda *args: pytest.fail("the build began on a full disk"))
    with pytest.raises(HfTlError, match="the disk is full: the feature cache needs .* GB under"):
        train(tiny_vit, digits, tmp_path / "run", *DISK)
    assert not store_folders() and not list(cache_root().glob("*.partial-*"))


def test_without_posix_fallocate_a_disk_store_is_built_and_reused(tiny_vit, digits, tmp_path, monkeypatch, capsys):
    monkeypatch.delattr(os, "posix_fallocate")
    first = train(tiny_vit, digits, tmp_path / "a", *DISK, "training.epochs=1")
    (folder,) = store_folders()
    capsys.readouterr()
    again = train(tiny_vit, digits, tmp_path / "b", *DISK, "training.epochs=1")
    assert f"feature cache: reusing {folder}" in capsys.readouterr().out  # every part has its size and checksum
    assert_same_run(again, first)


def test_the_feature_cache_imports_neither_the_trainer_nor_fcntl():
    """The trainer calls the cache, never the reverse; and no Unix-only module stands in the way of importing it."""
    code = (
        "import sys; sys.modules['fcntl'] = None\n"  # an import of fcntl now fails, as off Unix
        "import hf_tl.training.cache.features\n"
        "assert 'hf_tl.training.trainer' not in sys.modules, 'the cache imported the trainer'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_lora_with_channels_last_on_an_accelerator_builds(tiny_resnet, digits, tmp_path, machine_with_accelerator):
    """channels_last is decided on the plain model: a peft wrapper renames every module."""
    recipe = load_recipe(
        "quickstart",
        [f"model.name={tiny_resnet}", f"data.dataset={digits}", f"output.dir={tmp_path}", "strategy.kind=lora"],
    )
    trainer, *_ = build_trainer(recipe, tmp_path)
    conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


# Issue 16: a smoke run costs what it trains; a costly store outlives its run; a reused store needs no probe;
# cache_storage=auto does not depend on the memory free at the moment.

SMOKE = ("strategy.kind=last_block", "training.warmup_ratio=0", "training.logging_steps=1")


@pytest.mark.slow
def test_a_run_stopped_by_max_steps_caches_and_scores_only_the_images_it_draws(tiny_vit, digits, tmp_path):
    """8 steps of 4 out of 48 training images: 32 cached and scored, and the run is the uncached run, step by step."""
    steps = (*SMOKE, "training.batch_size=4", "training.max_steps=8")
    cached = train(tiny_vit, digits, tmp_path / "c", *steps, "training.cache_features=true")
    uncached = train(tiny_vit, digits, tmp_path / "u", *steps, "training.cache_features=false")
    assert cached[0]["num_train_examples"] == 48
    assert cached[0]["train"]["num_examples"] == uncached[0]["train"]["num_examples"] == 32
    assert cached[0]["feature_cache"]["cached_train_images"] == 32
    assert_same_run(cached, uncached)  # the same draws: same losses at every step, same train metrics
    full, _ = train(tiny_vit, digits, tmp_path / "f", *SMOKE, "training.batch_size=4", "training.epochs=1")
    assert full["feature_cache"]["cached_train_images"] == full["train"]["num_examples"] == 48


@pytest.mark.slow
def test_a_smoke_run_with_gradient_accumulation_draws_only_cached_images(tiny_vit, digits, tmp_path):
    overrides = (*SMOKE, "training.max_steps=2", "training.grad_accum=3", "training.batch_size=4")
    cached = train(tiny_vit, digits, tmp_path / "c", *overrides, "training.cache_features=true")
    uncached = train(tiny_vit, digits, tmp_path / "u", *overrides, "training.cache_features=false")
    assert cached[0]["train"]["num_examples"] == 24  # 2 steps x 3 batches x 4 images
    assert cached[0]["feature_cache"]["cached_train_images"] == 24
    losses = [[h["loss"] for h in log if "loss" in h] for _, log in (cached, uncached)]
    assert len(losses[0]) == 2 and losses[0] == pytest.approx(losses[1], abs=TOLERANCE)
    assert cached[0]["train"]["accuracy"] == pytest.approx(uncached[0]["train"]["accuracy"], abs=TOLERANCE)
    assert uncached[0]["train"]["num_examples"] == 24


def test_a_store_that_took_long_to_build_is_kept_on_disk_and_the_next_run_reuses_it(
    tiny_vit, digits, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(feature_cache, "PERSIST_MIN_SECONDS", 0.0, raising=False)  # any build counts as long here
    monkeypatch.setattr(feature_cache, "SLOW_DISK_BYTES_PER_SECOND", float("inf"), raising=False)
    args = ("strategy.kind=last_block", "training.cache_features=true", "training.epochs=1")
    first = train(tiny_vit, digits, tmp_path / "a", *args)
    assert first[0]["feature_cache"]["location"] == "memory"
    (folder,) = store_folders()  # the store was also written to disk
    assert first[0]["feature_cache"]["kept_on_disk"] == str(folder)
    capsys.readouterr()
    again = train(tiny_vit, digits, tmp_path / "b", *args)
    assert f"feature cache: reusing {folder}" in capsys.readouterr().out
    assert again[0]["feature_cache"]["location"] == f"disk: {folder}" and again[0]["feature_cache"]["reused"]
    assert_same_run(again, first)


def test_a_store_quick_to_build_is_not_written_to_disk(tiny_vit, digits, tmp_path):
    metrics, _ = train(tiny_vit, digits, tmp_path, "strategy.kind=last_block", "training.epochs=1")
    assert metrics["feature_cache"]["location"] == "memory" and "kept_on_disk" not in metrics["feature_cache"]
    assert not store_folders()


def no_probe(monkeypatch):
    """From here on, any traced forward pass or dropout check (the probe's work) fails the test."""

    def probed(*args, **kwargs):
        raise AssertionError("the model was probed although the store holds its verified split")

    monkeypatch.setattr(prefix_split, "_trace", probed)
    monkeypatch.setattr(feature_cache, "random_in_training", probed)


def test_a_run_reusing_a_store_skips_the_probe(tiny_vit, digits, tmp_path, monkeypatch):
    """The store carries the verified split: the second run traces, verifies and checks nothing."""
    args = ("strategy.kind=last_block", "training.cache_features=true", "training.cache_storage=disk")
    first = train(tiny_vit, digits, tmp_path / "a", *args)
    no_probe(monkeypatch)
    again = train(tiny_vit, digits, tmp_path / "b", *args)
    assert again[0]["feature_cache"]["probe"] == "read from the store" and again[0]["feature_cache"]["reused"]
    assert first[0]["feature_cache"]["probe"] == "ran"
    assert_same_run(again, first)


def test_a_stored_dropout_finding_turns_auto_off_without_a_probe(digits, tmp_path, monkeypatch, capsys):
    """Built with cache_features=true on a model with dropout before the cut; auto then refuses it, as a probe would."""
    model = save_vit(tmp_path / "vit-dropout", attention_probs_dropout_prob=0.3)
    disk = ("strategy.kind=last_block", "training.cache_storage=disk", "training.epochs=1")
    train(model, digits, tmp_path / "a", *disk, "training.cache_features=true")
    no_probe(monkeypatch)
    metrics, _ = train(model, digits, tmp_path / "b", *disk)
    assert metrics["feature_cache"] == {"used": False}
    assert "drops activations at random before the cut" in capsys.readouterr().out


def test_auto_storage_follows_total_memory_not_what_happens_to_be_free(tiny_vit, digits, tmp_path, monkeypatch):
    """A busy machine (1 byte free) chooses as an idle one does; only a machine too small for the store goes to disk."""
    monkeypatch.setattr(feature_cache, "_free_memory", lambda: 1, raising=False)  # what auto used to read
    args = ("strategy.kind=last_block", "training.epochs=1")
    busy, _ = train(tiny_vit, digits, tmp_path / "busy", *args)
    assert busy["feature_cache"]["location"] == "memory" and busy["feature_cache"]["storage"] == "auto"
    monkeypatch.setattr(feature_cache, "_machine_memory", lambda: 1)
    small, _ = train(tiny_vit, digits, tmp_path / "small", *args)
    assert small["feature_cache"]["location"].startswith("disk")


def test_auto_skips_the_cache_where_it_would_cost_more_than_it_saves(tiny_vit, digits, tmp_path, capsys):
    """One epoch with flips and no train-set metrics: both views of 48 images and 12 validation images (108 passes of
    the frozen part) against 48 drawn and 12 evaluated twice (72). Without flips the cache saves (60 against 72)."""
    args = ("strategy.kind=last_block", "training.epochs=1", "training.train_metrics=false")
    metrics, _ = train(tiny_vit, digits, tmp_path / "a", *args)
    assert metrics["feature_cache"] == {"used": False}
    assert "images, 72 without it (1 epoch(s), 2 views per training image): no saving" in capsys.readouterr().out
    metrics, _ = train(tiny_vit, digits, tmp_path / "b", *args, "data.augment=none")
    assert metrics["feature_cache"]["used"]
    metrics, _ = train(tiny_vit, digits, tmp_path / "c", *args[:2])  # with train-set metrics: 108 against 120
    assert metrics["feature_cache"]["used"]
