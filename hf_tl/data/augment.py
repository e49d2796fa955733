"""Train-time augmentation (`data.augment`) and batch mixing (`training.mixup`, `training.cutmix`), on the device.

Like `Preprocess`, these run on the training device after the loader, on uint8 images at their native
size (a stacked batch or a list of different sizes). Every random draw comes from the global
generators (torch's for the crops, flips and TrivialAugment; numpy's for timm's Mixup), which
`set_seed` seeds and a checkpoint restores, so a run is seeded and a resumed run redraws what an
uninterrupted one would.

`crop_flip` is torchvision's `RandomResizedCrop` (scale (0.08, 1), ratio (3/4, 4/3): timm's and the
transformers example's) with the run's resize filter, antialiased, then a horizontal flip;
`trivialaugment` adds torchvision's `TrivialAugmentWide` (its defaults: nearest filter, black fill).
The crop boxes are drawn as `RandomResizedCrop.get_params` draws them (it is called), and the crop and
resize are `resized_crop`, per image, since every box differs; the flips and normalisation (`Preprocess.normalise`,
the one definition of it) run on the whole batch. Draw order per batch: every image's box, then the
flips (`draw_flips`), then TrivialAugment's draws image by image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.transforms import RandomResizedCrop, v2
from torchvision.transforms.v2 import functional as TF

from hf_tl.config.recipe import TrainingSection
from hf_tl.data.preprocess import INTERPOLATIONS, Preprocess, draw_flips, mirror

SCALE = (0.08, 1.0)  # share of the image's area a crop covers (timm, the transformers example)
RATIO = (3 / 4, 4 / 3)  # a crop's aspect ratio, drawn log-uniformly
TRIVIAL_AUGMENT = v2.TrivialAugmentWide()  # holds no state: one serves every batch


def crop_box(image: Tensor) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random crop of a (3, h, w) image, drawn by torchvision itself."""
    return RandomResizedCrop.get_params(image, list(SCALE), list(RATIO))


@dataclass(frozen=True)
class Augment:
    """`data.augment` on a training batch: uint8 images (B, 3, h, w) or a list of (3, h, w) to pixel values.

    Evaluation never passes here: it runs `preprocess` alone.
    """

    kind: str
    preprocess: Preprocess

    def __call__(self, images: Tensor | list[Tensor]) -> Tensor:
        if self.kind == "none":
            return self.preprocess(images)
        if self.kind == "flip":  # drawn where the feature cache draws them, so both paths flip alike
            return self.preprocess(images, draw_flips(len(images)))
        crops = torch.stack([self._resized_crop(image) for image in images])
        crops = mirror(crops, draw_flips(len(crops)))
        if self.kind == "trivialaugment":
            crops = torch.stack([TRIVIAL_AUGMENT(crop) for crop in crops])
        return self.preprocess.normalise(crops)

    def _resized_crop(self, image: Tensor) -> Tensor:
        top, left, height, width = crop_box(image)
        filter_ = INTERPOLATIONS[self.preprocess.interpolation]
        return TF.resized_crop(image, top, left, height, width, list(self.preprocess.size), filter_, antialias=True)


class BatchMixup:
    """timm's `Mixup` (mixup and/or CutMix, with label smoothing) on a training batch on the device.

    timm needs an even batch. An odd one (a last batch, or one per process) mixes all but its last image,
    which keeps its own label, smoothed as timm would: every other image still mixes, and no image is
    dropped. The targets are (B, classes) float rows, which the loss reads as soft targets.
    """

    def __init__(self, mixup: float, cutmix: float, label_smoothing: float, num_classes: int) -> None:
        from timm.data import Mixup  # imported only by a run that mixes

        self.mix = Mixup(
            mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=label_smoothing, num_classes=num_classes
        )
        self.label_smoothing, self.num_classes = label_smoothing, num_classes

    def __call__(self, pixels: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Mixed pixels (in place) and their soft targets."""
        from timm.data.mixup import mixup_target

        even = len(labels) - len(labels) % 2
        targets = mixup_target(labels, self.num_classes, 1.0, self.label_smoothing)
        if even:
            _, targets[:even] = self.mix(pixels[:even], labels[:even])
        return pixels, targets


def batch_mixup(training: TrainingSection, num_classes: int) -> BatchMixup | None:
    """The recipe's mixing (`training.mixup`, `training.cutmix`), or None when both alphas are 0 (off)."""
    if training.mixup == 0 and training.cutmix == 0:
        return None
    return BatchMixup(training.mixup, training.cutmix, training.label_smoothing, num_classes)
