"""The recipe's augmentation and mixing reach the Trainer's batches in training only; evaluation sees plain pixels."""

from __future__ import annotations

import numpy as np
import torch

from hf_tl.config.recipe import load_recipe
from hf_tl.training.run import build_trainer


def batches(tiny_vit, digits_dir, tmp_path, *overrides) -> tuple[dict, dict, torch.Tensor]:
    """One training batch prepared in training mode and the same batch in evaluation mode, and its images."""
    recipe = load_recipe(
        "quickstart",
        [f"model.name={tiny_vit}", f"data.dataset={digits_dir}", f"output.dir={tmp_path}", "training.batch_size=8"]
        + list(overrides),
    )
    trainer, *_ = build_trainer(recipe, tmp_path)
    batch = next(iter(trainer.get_train_dataloader()))
    images = batch["images"]
    torch.manual_seed(0)
    np.random.seed(0)
    trainer.model.train()
    training = trainer._prepare_inputs(dict(batch))
    trainer.model.eval()
    evaluation = trainer._prepare_inputs(dict(batch))
    plain = trainer.preprocess(images.to(training["pixel_values"].device))
    return training, evaluation, plain


def test_mixup_and_crops_in_training_only(tiny_vit, digits_dir, tmp_path):
    overrides = ("data.augment=crop_flip", "training.mixup=0.8", "training.label_smoothing=0.1")
    training, evaluation, plain = batches(tiny_vit, digits_dir, tmp_path, *overrides)
    assert training["labels"].shape == (8, 5) and training["labels"].is_floating_point()  # mixup's soft targets
    assert torch.allclose(training["labels"].sum(1), torch.ones(8))
    assert not torch.allclose(training["pixel_values"], plain)
    assert evaluation["labels"].dtype == torch.long
    assert torch.equal(evaluation["pixel_values"], plain)


def test_none_gives_the_plain_pixels_in_training(tiny_vit, digits_dir, tmp_path):
    training, _, plain = batches(tiny_vit, digits_dir, tmp_path, "data.augment=none", "training.cache_features=false")
    assert torch.equal(training["pixel_values"], plain) and training["labels"].dtype == torch.long
