"""Resize, flip and normalise whole batches as tensor ops, on whatever device the batch is on.

The data loader hands over uint8 images at their native size (a 32x32 CIFAR image stays 3 KB
instead of a 600 KB float tensor at 224x224); the Trainer moves them to the training device and
calls `Preprocess` there. One definition serves training, the feature cache, eval and analyze,
so every path sees the same pixels.

The order is chosen for speed and is exact: the flip is applied at native size before the
resize (bilinear and bicubic resizing commute with a mirror; nearest does not, so it flips
after), the resize runs on uint8 like transformers' image processors (on a CPU through torch's
uint8 kernel on channels_last tensors, so the output is channels_last there), and the float
conversion and normalisation are one multiply and one subtract at the output size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF
from transformers.image_transforms import convert_to_rgb

INTERPOLATIONS = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST_EXACT,  # PIL's NEAREST, which processors use; NEAREST is torch's legacy
}
FLIP_COMMUTES_WITH_RESIZE = ("bilinear", "bicubic")  # mirror-symmetric kernels


@dataclass(frozen=True)
class Preprocess:
    """The model's input size, resize filter and normalisation; `flips` (one bool per image) mirrors.

    `resize` says how an image reaches `size`: None straight to it (training's 32->224 upscaling);
    (h, w) to that size, then a centre crop to `size`; an int scales the shorter side to it, keeping
    the aspect ratio, then centre-crops. `crop_offset` is how an odd margin is split: transformers'
    processors floor it, torchvision (timm) rounds it.
    """

    size: tuple[int, int]
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    normalize: bool = True
    channels_last: bool = False
    resize: tuple[int, int] | int | None = None
    crop_offset: str = "floor"

    def __call__(self, images: torch.Tensor | list[torch.Tensor], flips: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 images (B, 3, h, w), or a list of (3, h, w) of different sizes, to float pixel values."""
        if isinstance(images, (list, tuple)):
            single = [self(image[None], None if flips is None else flips[i : i + 1]) for i, image in enumerate(images)]
            return torch.cat(single)
        early = self.interpolation in FLIP_COMMUTES_WITH_RESIZE and self.resize is None  # a crop may not commute
        if flips is not None and early:
            images = mirror(images, flips)
        target = self.resized_size(tuple(images.shape[-2:]))
        if tuple(images.shape[-2:]) != target:
            images = self._resize(images, target)
        if target != self.size:
            images = self._centre_crop(images)
        if flips is not None and not early:
            images = mirror(images, flips)
        return self.normalise(images)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (B, 3, H, W) already at `size` to float pixel values: the one definition of normalisation,
        which the train-time augmentation (`hf_tl.data.augment`) shares."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        pixels = images.float()
        if self.normalize:
            std = torch.tensor(self.std, device=pixels.device).view(1, -1, 1, 1)
            mean = torch.tensor(self.mean, device=pixels.device).view(1, -1, 1, 1)
            pixels = pixels.mul_(1 / (255 * std)).sub_(mean / std)
        else:
            pixels = pixels.div_(255)
        return pixels

    def resized_size(self, source: tuple[int, int]) -> tuple[int, int]:
        """The size an image of `source` (h, w) is resized to, before any crop (torchvision's arithmetic)."""
        if self.resize is None:
            return self.size
        if isinstance(self.resize, tuple):
            return self.resize
        height, width = source
        short, long = sorted((height, width))
        long = int(self.resize * long / short)
        return (self.resize, long) if height <= width else (long, self.resize)

    def _resize(self, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """torchvision's antialiased resize of uint8 images; on a CPU, its uint8 kernel called directly.

        torchvision runs that kernel on channels_last input and converts back; keeping channels_last
        (the values are the same) makes the resize about three times faster here.
        """
        if images.device.type == "cpu" and self.interpolation in FLIP_COMMUTES_WITH_RESIZE:
            channels_last = images.contiguous(memory_format=torch.channels_last)
            resized = F.interpolate(channels_last, size=size, mode=self.interpolation, antialias=True)
            return resized.contiguous()  # uint8: a quarter of the float's bytes, and float ops run fastest contiguous
        return TF.resize(images, list(size), INTERPOLATIONS[self.interpolation], antialias=True)

    def _centre_crop(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        if height < self.size[0] or width < self.size[1]:
            raise ValueError(f"cannot centre-crop {height}x{width} to {self.size[0]}x{self.size[1]}")
        split = math.floor if self.crop_offset == "floor" else round
        top, left = int(split((height - self.size[0]) / 2)), int(split((width - self.size[1]) / 2))
        return images[..., top : top + self.size[0], left : left + self.size[1]]

    def key(self) -> dict[str, Any]:
        """What a cached feature depends on (the feature cache's key)."""
        key = {
            "size": list(self.size),
            "interpolation": self.interpolation,
            "mean": list(self.mean) if self.normalize else None,
            "std": list(self.std) if self.normalize else None,
        }
        if self.resize is not None:
            key["resize"] = list(self.resize) if isinstance(self.resize, tuple) else self.resize
            key["crop_offset"] = self.crop_offset
        return key


def draw_flips(batch_size: int) -> torch.Tensor:
    """Which images of a training batch to mirror, from the global (CPU) generator.

    The cached and the uncached path draw here at the same point of each training step, so with
    the same seed both see the same flips, and a resumed run (the Trainer restores the generator)
    the same as an uninterrupted one.
    """
    return torch.rand(batch_size) < 0.5


def to_device(images: torch.Tensor | list[torch.Tensor], device: torch.device) -> torch.Tensor | list[torch.Tensor]:
    """A stacked uint8 batch, or a list of images of different sizes, onto `device`."""
    if isinstance(images, torch.Tensor):
        return images.to(device, non_blocking=True)
    return [image.to(device, non_blocking=True) for image in images]


def to_uint8(image: Any) -> torch.Tensor:
    """A PIL image of any mode as a (3, h, w) uint8 RGB tensor, grey repeated and transparency composited onto
    white: what transformers' processors do (`convert_to_rgb`), so the processor saved with a model sees the
    pixels training saw (a plain `convert("RGB")` would keep the colour under transparent pixels)."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        return torch.from_numpy(convert_to_rgb(image, return_numpy=True)).permute(2, 0, 1).contiguous()
    return TF.pil_to_tensor(image.convert("RGB"))


def mirror(images: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Each image of a (B, 3, h, w) batch mirrored where `flips` (one bool per image) says so."""
    mask = flips.to(images.device).view(-1, 1, 1, 1)
    return torch.where(mask, images.flip(-1), images)
