"""Batched preprocessing on the device: the image processor's pixels, from uint8 images at native size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import digits, make_transform
from PIL import Image as PILImage
from transformers import ViTImageProcessor

from hf_tl.config.recipe import DataSection, load_recipe
from hf_tl.data.datasets import preprocess_for
from hf_tl.data.preprocess import Preprocess, to_uint8
from hf_tl.training.run import build_trainer

# transformers' image processors resize the uint8 image too, with torchvision's antialiased kernels:
# measured here, the batched path agrees with ViTImageProcessor to float rounding (< 2e-6).
PROCESSOR_TOLERANCE = 1e-5


def cifar_like(count: int, seed: int = 0) -> list[PILImage.Image]:
    """32x32 colour images with structure: digits, coloured per channel, upscaled as CIFAR's size."""
    rng = np.random.default_rng(seed)
    images = []
    for image in digits(per_class=4)["image"][:count]:
        g = np.asarray(image.resize((32, 32), PILImage.BILINEAR))
        noise = rng.integers(0, 40, g.shape, dtype=np.uint8)
        images.append(PILImage.fromarray(np.stack([g, 255 - g, g // 2 + noise], axis=-1), "RGB"))
    return images


@pytest.mark.parametrize("size", [224, 16])  # the studies' 32 -> 224 upscaling, and a downscale
def test_batched_path_matches_the_image_processor(size):
    processor = ViTImageProcessor(size={"height": size, "width": size}, image_mean=[0.4, 0.5, 0.6])
    images = cifar_like(8)
    ours = preprocess_for(processor, DataSection(dataset="x"))(torch.stack([to_uint8(i) for i in images]))
    theirs = processor(images=images, return_tensors="pt").pixel_values
    assert ours.shape == theirs.shape == (8, 3, size, size)
    assert (ours - theirs).abs().max().item() < PROCESSOR_TOLERANCE


def test_batched_path_equals_the_per_image_transform():
    processor = ViTImageProcessor(size={"height": 224, "width": 224})
    cfg = DataSection(dataset="x")
    images = cifar_like(6)
    batched = preprocess_for(processor, cfg)(torch.stack([to_uint8(i) for i in images]))
    single = make_transform(processor, cfg, False, "image", "label")({"image": images, "label": [0] * 6})
    assert torch.equal(batched, torch.stack(single["pixel_values"]))


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
@pytest.mark.parametrize("source", [(32, 32), (64, 48)])
def test_flip_is_a_mirror_of_the_unflipped_result(interpolation, source):
    """Bilinear and bicubic flip before resizing (cheaper); the result must still be the exact mirror."""
    preprocess = Preprocess((24, 24), interpolation, (0.5,) * 3, (0.25,) * 3)
    images = torch.randint(0, 256, (6, 3, *source), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    flips = torch.tensor([True, False, True, True, False, False])
    plain, flipped = preprocess(images), preprocess(images, flips)
    assert torch.equal(flipped[flips], plain[flips].flip(-1))
    assert torch.equal(flipped[~flips], plain[~flips])


def test_images_of_different_sizes_are_resized_one_by_one():
    preprocess = Preprocess((16, 16), "bilinear", (0.5,) * 3, (0.5,) * 3)
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8) for h, w in [(8, 8), (20, 12), (16, 16)]]
    out = preprocess(images, torch.tensor([False, True, False]))
    assert out.shape == (3, 3, 16, 16)
    for i, image in enumerate(images):
        alone = preprocess(image[None], torch.tensor([i == 1]))
        assert torch.equal(out[i : i + 1], alone)


def test_channels_last_changes_the_layout_not_the_values():
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    plain = Preprocess((64, 64), "bilinear", (0.5,) * 3, (0.5,) * 3)
    fast = Preprocess((64, 64), "bilinear", (0.5,) * 3, (0.5,) * 3, channels_last=True)
    out = fast(images)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, plain(images))


def test_the_loader_keeps_uint8_images_at_native_size(tiny_vit, digits_dir, tmp_path):
    recipe = load_recipe(
        "quickstart",
        [
            f"model.name={tiny_vit}",
            f"data.dataset={digits_dir}",
            f"output.dir={tmp_path}",
            "training.batch_size=8",
            "training.cache_features=false",
        ],
    )
    trainer, *_ = build_trainer(recipe, tmp_path)
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["images"].dtype == torch.uint8
    assert batch["images"].shape == (8, 3, 8, 8)  # the digits' own 8x8, not the model's 16x16
    inputs = trainer._prepare_inputs(dict(batch))
    assert inputs["pixel_values"].shape == (8, 3, 16, 16) and inputs["pixel_values"].dtype == torch.float32


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize(("source", "size"), [((32, 32), (224, 224)), ((64, 48), (16, 16)), ((8, 8), (16, 24))])
def test_cpu_resize_equals_torchvisions(interpolation, source, size):
    """The CPU path calls torch's uint8 kernel directly; it must give torchvision's resize exactly."""
    from torchvision.transforms.v2 import functional as TF

    from hf_tl.data.preprocess import INTERPOLATIONS

    images = torch.randint(0, 256, (5, 3, *source), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    ours = Preprocess(size, interpolation, (0.0,) * 3, (1.0,) * 3, normalize=False)(images)
    theirs = TF.resize(images, list(size), INTERPOLATIONS[interpolation], antialias=True).float().div_(255)
    assert torch.equal(ours, theirs)
