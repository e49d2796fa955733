"""`data.augment` and `training.mixup`/`cutmix` against their references: torchvision per image, timm's Mixup."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from timm.data import Mixup
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from hf_tl.config.recipe import TrainingSection
from hf_tl.data.augment import Augment, BatchMixup, batch_mixup, crop_box
from hf_tl.data.preprocess import INTERPOLATIONS, Preprocess

SIZE = (24, 24)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def preprocess(interpolation: str = "bilinear") -> Preprocess:
    return Preprocess(size=SIZE, interpolation=interpolation, mean=MEAN, std=STD)


def images(count: int, sizes: list[tuple[int, int]] | None = None, seed: int = 0) -> list[torch.Tensor]:
    """Random uint8 images, (3, h, w) each; smooth enough that a crop and a resize change them."""
    generator = torch.Generator().manual_seed(seed)
    sizes = sizes or [(40, 56)] * count
    return [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator) for h, w in sizes]


def normalised(uint8: torch.Tensor) -> torch.Tensor:
    """torchvision's own ToDtype + Normalize: the reference for Preprocess.normalise."""
    return TF.normalize(TF.to_dtype(uint8, torch.float32, scale=True), list(MEAN), list(STD))


def reference_crop_flip(batch: list[torch.Tensor], interpolation: str) -> torch.Tensor:
    """torchvision per image: v2.RandomResizedCrop for every image, then one flip draw per image."""
    crop = v2.RandomResizedCrop(SIZE, antialias=True, interpolation=INTERPOLATIONS[interpolation])
    crops = [crop(image) for image in batch]
    flips = torch.rand(len(batch)) < 0.5  # the draw hf_tl's draw_flips makes
    return torch.stack([TF.horizontal_flip(c) if f else c for c, f in zip(crops, flips, strict=True)])


@pytest.mark.parametrize("size", [(40, 56), (56, 40), (9, 300), (300, 9), (24, 24)])
def test_crop_boxes_are_torchvisions(size):
    """The same boxes as v2.RandomResizedCrop's own draw (scale (0.08, 1), ratio (3/4, 4/3)), its fallback included."""
    image = torch.zeros(3, *size, dtype=torch.uint8)
    reference = v2.RandomResizedCrop(SIZE, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
    torch.manual_seed(1)
    ours = [crop_box(image) for _ in range(100)]
    torch.manual_seed(1)
    theirs = [tuple(reference.make_params([image]).values()) for _ in range(100)]
    assert ours == theirs
    fallback = max(size) / min(size) > 20  # no draw fits in 10 tries: torchvision's central crop every time
    assert len(set(ours)) == 1 if fallback else len(set(ours)) > 50


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
@pytest.mark.parametrize("layout", ["stacked", "list"])
def test_crop_flip_pixels_equal_torchvision_per_image(interpolation, layout):
    """Same seed, same draws: the batch equals v2.RandomResizedCrop(antialias=True) + flip image by image."""
    sizes = [(40, 56)] * 8 if layout == "stacked" else [(40, 56), (31, 17), (64, 64), (20, 90), (33, 33), (90, 20)]
    batch = images(len(sizes), sizes)
    given = torch.stack(batch) if layout == "stacked" else batch
    torch.manual_seed(3)
    ours = Augment("crop_flip", preprocess(interpolation))(given)
    torch.manual_seed(3)
    theirs = normalised(reference_crop_flip(batch, interpolation))
    assert ours.shape == (len(batch), 3, *SIZE)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_trivialaugment_follows_crop_flip_with_torchvisions_draws():
    """Draw order: every box, the flips, then TrivialAugmentWide image by image (torchvision's, per image)."""
    batch = images(6)
    torch.manual_seed(4)
    ours = Augment("trivialaugment", preprocess())(torch.stack(batch))
    torch.manual_seed(4)
    cropped = reference_crop_flip(batch, "bilinear")
    trivial = v2.TrivialAugmentWide()
    theirs = normalised(torch.stack([trivial(image) for image in cropped]))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def trivial_changes(augmented: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
    """Per image, the mean absolute change TrivialAugmentWide made (0 for its identity, or a zero magnitude)."""
    return (augmented.float() - before.float()).abs().mean(dim=(1, 2, 3))


def test_trivialaugment_statistics_match_torchvision_per_image():
    """Over 256 images: what TrivialAugmentWide does to its input, batched here and per image in torchvision.

    Compared: the share of images it leaves unchanged (identity, or a zero magnitude) and the mean absolute pixel
    change, from two independent seeds. Also that the op is drawn per image: a batch of copies of one image comes
    out in many different versions, not one op for the whole batch.
    """
    count = 256
    image = images(1, [(32, 32)], seed=5)[0]
    plain = Preprocess(size=(32, 32), interpolation="bilinear", mean=(0.0,) * 3, std=(1 / 255,) * 3)  # pixels x1
    torch.manual_seed(6)
    crop_flipped = Augment("crop_flip", plain)(torch.stack([image] * count))
    torch.manual_seed(6)  # the same boxes and flips, then TrivialAugmentWide on them
    ours = trivial_changes(Augment("trivialaugment", plain)(torch.stack([image] * count)), crop_flipped)
    torch.manual_seed(7)
    reference = v2.Compose(
        [v2.RandomResizedCrop((32, 32), antialias=True), v2.RandomHorizontalFlip(), v2.TrivialAugmentWide()]
    )
    before_after = []
    for _ in range(count):
        state = torch.get_rng_state()
        augmented = reference(image)
        after = torch.get_rng_state()
        torch.set_rng_state(state)
        cropped = v2.Compose(reference.transforms[:2])(image)  # the same crop and flip draws, without TA
        torch.set_rng_state(after)
        before_after.append(trivial_changes(augmented[None], cropped[None]))
    theirs = torch.cat(before_after)
    unchanged_ours, unchanged_theirs = (ours == 0).float().mean(), (theirs == 0).float().mean()
    assert 0.02 < unchanged_ours < 0.35 and 0.02 < unchanged_theirs < 0.35  # identity is 1 of 14 ops
    assert abs(unchanged_ours - unchanged_theirs) < 0.1
    assert ours.mean() == pytest.approx(theirs.mean().item(), rel=0.25)  # seen: within 16% over 6 seed pairs
    assert len({round(x, 3) for x in ours.tolist()}) > count // 4  # drawn image by image


def test_none_never_flips_and_flip_flips_about_half():
    image = images(1, [(24, 24)])[0]
    base = preprocess()(image[None])[0]
    mirrored = base.flip(-1)
    batch = torch.stack([image] * 200)
    torch.manual_seed(0)
    none = Augment("none", preprocess())(batch)
    assert all(torch.equal(out, base) for out in none)
    flipped = Augment("flip", preprocess())(batch)
    is_mirrored = [torch.equal(out, mirrored) for out in flipped]
    assert all(m or torch.equal(out, base) for m, out in zip(is_mirrored, flipped, strict=True))
    assert 70 <= sum(is_mirrored) <= 130  # Binomial(200, 0.5): mean 100, sd ~7


def test_augment_is_seeded():
    batch = torch.stack(images(4))
    results = []
    for _ in range(2):
        torch.manual_seed(9)
        results.append(Augment("trivialaugment", preprocess())(batch))
    torch.testing.assert_close(*results, rtol=0, atol=0)


@pytest.mark.parametrize(("mixup", "cutmix"), [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixup_changes_inputs_and_targets_as_timm_does(mixup, cutmix):
    pixels = torch.randn(8, 3, 16, 16)
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    np.random.seed(0)
    ours, targets = BatchMixup(mixup, cutmix, 0.1, 5)(pixels.clone(), labels)
    np.random.seed(0)
    theirs, their_targets = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=0.1, num_classes=5)(
        pixels.clone(), labels
    )
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    torch.testing.assert_close(targets, their_targets, rtol=0, atol=0)
    assert not torch.equal(ours, pixels)
    assert targets.shape == (8, 5) and torch.allclose(targets.sum(1), torch.ones(8))
    assert (targets > 0.1 / 5 + 1e-6).sum(1).max() == 2  # two classes mixed in a row


def test_an_odd_batch_mixes_all_but_its_last_image():
    """timm refuses an odd batch; the last image keeps its pixels and its own label, smoothed as timm smooths."""
    pixels = torch.randn(7, 3, 16, 16)
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 1])
    np.random.seed(0)
    ours, targets = BatchMixup(0.8, 0.0, 0.1, 5)(pixels.clone(), labels)
    np.random.seed(0)
    theirs, their_targets = Mixup(mixup_alpha=0.8, label_smoothing=0.1, num_classes=5)(pixels[:6].clone(), labels[:6])
    torch.testing.assert_close(ours[:6], theirs, rtol=0, atol=0)
    torch.testing.assert_close(targets[:6], their_targets, rtol=0, atol=0)
    assert torch.equal(ours[6], pixels[6])
    torch.testing.assert_close(targets[6], torch.tensor([0.02, 0.92, 0.02, 0.02, 0.02]))
    one = torch.randn(1, 3, 4, 4)
    assert torch.equal(BatchMixup(0.8, 0.0, 0.0, 5)(one.clone(), torch.tensor([3]))[0], one)


def test_mixing_is_off_without_alphas():
    assert batch_mixup(TrainingSection(), 5) is None
    assert batch_mixup(TrainingSection(cutmix=1.0), 5) is not None
